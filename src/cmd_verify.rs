//! `vitconv verify`: runs the source checkpoint and its conversion side by side on libtorch and prints how far
//! their outputs are apart.
//!
//! The work is done by the `vitconv-verify` executable beside this one, the only one that links libtorch, so
//! that no other command pays for loading it (about 0.4 s and 640 MB at start). It is built with the cargo
//! feature `verify`; without it this command says in one line how to build it. Exit codes: 0 within tolerance,
//! 1 a real mismatch (or, for two towers, a declared setting that contradicts the source), 2 bad input.
//!
//! Tolerances (max abs diff relative to max(1, max |reference|), and cosine >= 1 - tolerance):
//! f32 1e-4 for one tower, 1e-5 for a two-tower (SigLIP) comparison; bf16 5e-2; f16 1e-2.

use std::process::ExitCode;

pub use crate::verify_args::VerifyArgs;

/// The executable that runs `verify`, found beside `vitconv`.
pub const VERIFY_EXE: &str = "vitconv-verify";

/// Runs `vitconv-verify` with the arguments given after `verify` (already checked by clap), in place of this
/// process, so that its output, signals and exit code are the command's own.
pub fn run(_args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?.with_file_name(VERIFY_EXE);
    if !exe.is_file() {
        anyhow::bail!(
            "{} is missing: verify runs on libtorch in an executable of its own; build it with `scripts/with-libtorch cargo build --release --features verify` (it is written beside vitconv)",
            exe.display()
        );
    }
    // clap accepted `vitconv verify ARGS...` with no option before the subcommand, so the arguments to hand
    // on are everything after the first two.
    let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(&rest);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let err = cmd.exec();
        Err(anyhow::Error::new(err).context(format!("cannot run {}", exe.display())))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status()?;
        Ok(ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(2),
        ))
    }
}
