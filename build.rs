// Compiles kernels/*.cu with nvcc. OWNER: kernels helper.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
