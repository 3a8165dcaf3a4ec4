//! Compiles every `kernels/*.cu` with nvcc into one static library, `libllama4_cuda_kernels.a`.
//!
//! nvcc is found from `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, then the repository's `.cuda/` (installed by
//! tools/cuda-toolchain.sh). Without nvcc the crate builds CPU-only: one cargo warning, no `llama4_kernels`
//! cfg, and every GPU entry point returns `Error::KernelsNotBuilt`. `L4C_REQUIRE_KERNELS=1` makes a missing
//! nvcc a build error (CI). See docs/BUILD.md.

use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const LIB_NAME: &str = "llama4_cuda_kernels";
/// Real code for Ampere (sm_80) and Hopper with its arch-specific features (sm_90a, for wgmma/TMA),
/// plus compute_80 PTX so newer GPUs can JIT the sm_80 code.
const GENCODE: [&str; 3] = [
    "arch=compute_80,code=sm_80",
    "arch=compute_90a,code=sm_90a",
    "arch=compute_80,code=compute_80",
];
const ENV_VARS: [&str; 6] = [
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "PATH",
    "L4C_REQUIRE_KERNELS",
    "NVCC_CCBIN",
];
/// Where tools/cuda-toolchain.sh puts the pip-installed toolkit, relative to the repository.
const LOCAL_CU13: &str = ".cuda/py/nvidia/cu13";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(llama4_kernels)");
    println!("cargo:rerun-if-changed=build.rs");
    // A directory is scanned recursively: any .cu / .cuh / .h change reruns this script.
    println!("cargo:rerun-if-changed=kernels");
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let repo =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let nvcc = match find_nvcc(&repo) {
        Ok(nvcc) => nvcc,
        Err(why) => {
            let msg = format!(
                "CUDA kernels not built: {why}. The crate is CPU-only; GPU entry points return \
                 Error::KernelsNotBuilt. Fix: run tools/cuda-toolchain.sh (no GPU or root needed), or set NVCC."
            );
            if env::var("L4C_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
                panic!("L4C_REQUIRE_KERNELS=1: {msg}");
            }
            println!("cargo:warning={msg}");
            return;
        }
    };
    let cuda_root = nvcc
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let cudart_dir = [
        "lib64",
        "lib",
        "targets/x86_64-linux/lib",
        "targets/sbsa-linux/lib",
    ]
    .iter()
    .map(|d| cuda_root.join(d))
    .find(|d| d.join("libcudart_static.a").is_file())
    .unwrap_or_else(|| {
        panic!(
            "libcudart_static.a not found under {} (nvcc {})",
            cuda_root.display(),
            nvcc.display()
        )
    });

    let mut sources: Vec<PathBuf> = fs::read_dir(repo.join("kernels"))
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    let headers_hash = hash_tree(&repo.join("kernels"), &["cuh", "h"]);

    // cc takes nvcc from the NVCC variable only (`.compiler()` would make it treat nvcc as gcc).
    env::set_var("NVCC", &nvcc);
    let mut build = cc::Build::new();
    build
        .cuda(true)
        .cudart("none") // linked below from the directory found above
        .debug(false) // cc would add -G (device debug), which disables device optimisation
        .opt_level(3)
        .cargo_metadata(false)
        .include(repo.join("kernels/include"))
        .include(repo.join("kernels"))
        .flag("-std=c++17")
        .flag("-Xptxas")
        .flag("-v")
        .flag("--expt-relaxed-constexpr")
        .flag("-lineinfo");
    for g in GENCODE {
        build.flag("-gencode").flag(g);
    }
    let tool = build.get_compiler();
    let flags: Vec<String> = tool
        .args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();

    // One object per .cu (whole-program device compilation: no -rdc), compiled in parallel and cached
    // by a hash of the source, every header and the flags, so editing one kernel rebuilds only it.
    let jobs: usize = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2)
        .max(1);
    let results: Vec<(PathBuf, String)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for chunk in sources.chunks(sources.len().div_ceil(jobs).max(1)) {
            let (tool, flags, out) = (&tool, &flags, &out);
            handles.push(s.spawn(move || {
                chunk
                    .iter()
                    .map(|src| compile_one(tool, flags, src, out, headers_hash))
                    .collect::<Vec<_>>()
            }));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("nvcc worker thread"))
            .collect()
    });

    remove_stale(&out, &results);

    // Archive through cc (plain, no device link: every object is already fully linked device code).
    let mut ar = cc::Build::new();
    ar.cargo_metadata(false);
    for (obj, _) in &results {
        ar.object(obj);
    }
    ar.compile(LIB_NAME);
    let lib = out.join(format!("lib{LIB_NAME}.a"));

    let report = ptxas_report(&results);
    fs::write(out.join("kernels-ptxas.txt"), &report).expect("write ptxas report");
    // target/<profile>/ (three levels above OUT_DIR) gets copies that people and tools can find.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let _ = fs::write(profile_dir.join("kernels-ptxas.txt"), &report);
        let _ = fs::copy(&lib, profile_dir.join(format!("lib{LIB_NAME}.a")));
    }

    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static={LIB_NAME}");
    println!("cargo:rustc-link-search=native={}", cudart_dir.display());
    for l in ["cudart_static", "dl", "rt", "pthread", "stdc++"] {
        println!("cargo:rustc-link-lib={l}");
    }
    println!("cargo:rustc-cfg=llama4_kernels");
    println!("cargo:rustc-env=L4C_KERNEL_LIB_DIR={}", out.display());
    println!("cargo:rustc-env=L4C_CUDA_LIB_DIR={}", cudart_dir.display());
    println!(
        "cargo:rustc-env=L4C_CUDA_BIN_DIR={}",
        nvcc.parent().unwrap_or(Path::new("")).display()
    );
    println!(
        "cargo:rustc-env=L4C_PTXAS_REPORT={}",
        out.join("kernels-ptxas.txt").display()
    );
}

/// The nvcc to use, or why there is none.
fn find_nvcc(repo: &Path) -> Result<PathBuf, String> {
    if let Some(v) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        // An explicit NVCC is taken as given (no fallback): NVCC=/nonexistent builds CPU-only on purpose.
        let p = PathBuf::from(&v);
        let p = if p.components().count() == 1 {
            which(&p).unwrap_or(p)
        } else {
            p
        };
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NVCC={} does not exist", v.to_string_lossy()))
        };
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var).filter(|v| !v.is_empty()) {
            let p = Path::new(&root).join("bin/nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(p) = which(Path::new("nvcc")) {
        return Ok(p);
    }
    let local = repo.join(LOCAL_CU13).join("bin/nvcc");
    if local.is_file() {
        return Ok(local);
    }
    Err(format!(
        "no nvcc in NVCC, CUDA_HOME, CUDA_PATH, PATH or {}",
        local.display()
    ))
}

fn which(name: &Path) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Compiles `src` to an object (reusing a cached one with the same inputs); returns it and ptxas's report.
fn compile_one(
    tool: &cc::Tool,
    flags: &[String],
    src: &Path,
    out: &Path,
    headers_hash: u64,
) -> (PathBuf, String) {
    let stem = src
        .file_stem()
        .expect("a .cu file has a stem")
        .to_string_lossy()
        .into_owned();
    let mut h = DefaultHasher::new();
    (
        fs::read(src).expect("read kernel source"),
        headers_hash,
        flags,
        tool.path(),
    )
        .hash(&mut h);
    let tag = format!("{stem}-{:016x}", h.finish());
    let obj = out.join(format!("{tag}.o"));
    let log = out.join(format!("{tag}.ptxas.txt"));
    if obj.is_file() && log.is_file() {
        return (obj, fs::read_to_string(&log).unwrap_or_default());
    }
    let mut cmd = tool.to_command();
    cmd.arg("-c").arg(src).arg("-o").arg(&obj);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.path().display()));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let _ = fs::remove_file(&obj);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        panic!(
            "nvcc failed on {}:\n{} {}\n{stdout}{stderr}",
            src.display(),
            tool.path().display(),
            args.join(" ")
        );
    }
    let text = format!("{stdout}{stderr}");
    fs::write(&log, &text).expect("write ptxas log");
    (obj, text)
}

/// Deletes cached objects and logs of earlier kernel versions, so OUT_DIR does not grow with every edit.
fn remove_stale(out: &Path, results: &[(PathBuf, String)]) {
    let keep: Vec<&Path> = results.iter().map(|(obj, _)| obj.as_path()).collect();
    for e in fs::read_dir(out).into_iter().flatten().flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(base) = name
            .strip_suffix(".ptxas.txt")
            .or_else(|| name.strip_suffix(".o"))
        else {
            continue;
        };
        let is_cached = base
            .rsplit_once('-')
            .is_some_and(|(_, h)| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if is_cached
            && !keep
                .iter()
                .any(|k| k.file_stem().is_some_and(|s| s.to_string_lossy() == base))
        {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Hash of the contents of every file under `dir` with one of `exts`, in path order.
fn hash_tree(dir: &Path, exts: &[&str]) -> u64 {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)) {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        (
            f.strip_prefix(dir).unwrap_or(&f),
            fs::read(&f).unwrap_or_default(),
        )
            .hash(&mut h);
    }
    h.finish()
}

/// A summary table (one line per kernel and arch) followed by ptxas's raw output per file.
fn ptxas_report(results: &[(PathBuf, String)]) -> String {
    let mut rows = Vec::new();
    for (obj, text) in results {
        let file = obj
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = file
            .rsplit_once('-')
            .map_or(file.clone(), |(stem, _)| stem.to_string());
        let (mut func, mut arch, mut props) = (String::new(), String::new(), String::new());
        for line in text.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                let mut it = rest.split('\'');
                func = it.next().unwrap_or_default().to_string();
                arch = it.nth(1).unwrap_or_default().to_string();
            } else if line.contains("bytes stack frame") {
                props = line.trim().to_string();
            } else if let Some(used) = line.split("info    : Used ").nth(1) {
                if !func.is_empty() {
                    rows.push(format!(
                        "{file:<14} {arch:<7} {used:<44} {props:<70} {}",
                        demangle(&func)
                    ));
                    func.clear();
                }
            }
        }
    }
    let mut s = String::from(
        "# ptxas -v summary: file, arch, resources, stack/spills, kernel (raw output below)\n",
    );
    let spills = rows
        .iter()
        .filter(|r| !r.contains(" 0 bytes spill stores, 0 bytes spill loads"))
        .count();
    s += &format!("# kernels x archs: {}, with spills: {spills}\n", rows.len());
    for r in rows {
        s += &r;
        s.push('\n');
    }
    for (obj, text) in results {
        s += &format!("\n## {}\n{text}", obj.display());
    }
    s
}

/// Demangles a C++ kernel name with c++filt when it is installed (cosmetic only).
fn demangle(name: &str) -> String {
    Command::new("c++filt")
        .arg(name)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| name.to_string())
}
