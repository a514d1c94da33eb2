//! Gives the `vitconv-verify` binary an rpath to libtorch and keeps `libtorch_cuda.so` linked, when built with the `verify` feature.
//!
//! torch-sys exports its library directory as `DEP_TCH_LIBTORCH_LIB` only to packages that
//! depend on it directly (hence the optional `torch-sys` dependency under the feature), and
//! `rustc-link-arg` only reaches the emitting package's own binaries, so the verify crate's
//! build script cannot do this for us. Without the rpath the binary needs LD_LIBRARY_PATH;
//! without `--no-as-needed` the linker drops `libtorch_cuda.so`, whose symbols nothing
//! references directly, and CUDA is silently unavailable.

use std::path::Path;

/// The executable that links libtorch.
const VERIFY_BIN: &str = "vitconv-verify";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_VERIFY").is_none() {
        // Without the feature nothing links libtorch: add nothing.
        return;
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // Only `vitconv-verify` links libtorch; `vitconv` itself must not load it (see src/cmd_verify.rs).
    println!("cargo:rustc-link-arg-bin={VERIFY_BIN}=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        for arg in ["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"] {
            println!("cargo:rustc-link-arg-bin={VERIFY_BIN}={arg}");
        }
    }
}
