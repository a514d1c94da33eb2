//! Links this crate's own test binaries against libtorch so that they run without LD_LIBRARY_PATH.
//!
//! torch-sys (links = "tch") tells its direct dependents where libtorch lives through
//! `DEP_TCH_LIBTORCH_LIB`, but sets no rpath on the final binaries, and the linker's
//! default `--as-needed` drops `libtorch_cuda.so` because no symbol of it is referenced
//! directly; without it CUDA is silently unavailable. `rustc-link-arg` only reaches the
//! emitting package's own binaries and tests, so the root package has the same build script
//! for the `vitconv` binary.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys did not report a directory (Windows, or the doc-only feature): nothing to add.
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
