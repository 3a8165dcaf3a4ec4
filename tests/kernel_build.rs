//! The build requirement, checked in the test suite: every kernels/*.cu is compiled for both
//! sm_80 and sm_90a (cuobjdump --list-elf lists both) plus compute_80 PTX. Runs tools/check-kernels.sh
//! on the library this build linked; skipped when the kernels were not built or cuobjdump is missing
//! (tools/cuda-toolchain.sh installs it), unless L4C_REQUIRE_KERNELS=1 (CI), where both are required.

use std::path::{Path, PathBuf};
use std::process::Command;

fn required() -> bool {
    std::env::var("L4C_REQUIRE_KERNELS").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!required(), "L4C_REQUIRE_KERNELS=1 but {why}");
    println!("skipped: {why}");
}

#[test]
fn every_kernel_file_has_sm80_and_sm90a() {
    let (Some(lib_dir), Some(bin_dir), Some(report)) = (
        option_env!("L4C_KERNEL_LIB_DIR"),
        option_env!("L4C_CUDA_BIN_DIR"),
        option_env!("L4C_PTXAS_REPORT"),
    ) else {
        return skip("CUDA kernels not built (run tools/cuda-toolchain.sh)");
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cuobjdump = std::env::var_os("CUOBJDUMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(bin_dir).join("cuobjdump"));
    let cuobjdump = if cuobjdump.is_file() {
        cuobjdump
    } else {
        repo.join(".cuda/py/nvidia/cu13/bin/cuobjdump")
    };
    if !cuobjdump.is_file() {
        return skip("cuobjdump not found (run tools/cuda-toolchain.sh)");
    }
    let out = Command::new(repo.join("tools/check-kernels.sh"))
        .arg(Path::new(lib_dir).join("libllama4_cuda_kernels.a"))
        .arg(report)
        .env("CUOBJDUMP", &cuobjdump)
        .output()
        .expect("run tools/check-kernels.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tools/check-kernels.sh failed:\n{text}"
    );
    println!("{text}");
}
