//! Compiles tests/c_abi/main.c with the system C compiler (`$CC`, default `cc`) as C and as C++,
//! links it against the static kernel library and the static CUDA runtime, and runs it. No GPU needed:
//! the program only exercises calls that must fail validation before any CUDA call.

use std::path::Path;
use std::process::Command;

#[test]
fn c_program_links_and_validates() {
    let (Some(lib_dir), Some(cuda_lib_dir)) = (
        option_env!("L4C_KERNEL_LIB_DIR"),
        option_env!("L4C_CUDA_LIB_DIR"),
    ) else {
        println!("skipped: CUDA kernels not built (run tools/cuda-toolchain.sh)");
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // The header must compile warning-free as C99 and as C++11.
    for (lang, std) in [("c", "-std=c99"), ("c++", "-std=c++11")] {
        let exe = tmp.path().join(format!("c_abi_{}", lang.replace('+', "x")));
        let out = Command::new(&cc)
            .args(["-x", lang, std, "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .arg("-I")
            .arg(repo.join("kernels/include"))
            .arg(repo.join("tests/c_abi/main.c"))
            .args(["-x", "none", "-o"])
            .arg(&exe)
            .arg(format!("-L{lib_dir}"))
            .arg("-lllama4_cuda_kernels")
            .arg(format!("-L{cuda_lib_dir}"))
            .args(["-lcudart_static", "-ldl", "-lrt", "-lpthread", "-lstdc++"])
            .output()
            .unwrap_or_else(|e| panic!("running {cc}: {e}"));
        assert!(
            out.status.success(),
            "{cc} ({lang}) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = Command::new(&exe)
            .output()
            .expect("run the C ABI test program");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success() && stdout.contains("checks passed"),
            "{lang}: {stdout}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        println!("{lang}: {}", stdout.trim());
    }
}
