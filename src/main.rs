//! The `vitconv` command line: parses arguments, calls the library crates, prints results.
//!
//! Exit codes: 0 success; 1 a verification that ran and found a mismatch;
//! 2 bad input, a refusal, or any other error (the reason goes to stderr on one line);
//! in batch mode (`npz-to-pt SRC_DIR OUT_DIR`), 2 when any file was refused or failed.

mod cmd_batch;
mod cmd_convert;
mod cmd_inspect;
mod cmd_verify;
mod labels;
mod report;
mod verify_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vitconv",
    version,
    about = "Convert JAX/Flax ViT checkpoints to PyTorch, inspect tensor files, verify conversions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a tensor file or a JAX checkpoint, and say what model they hold.
    #[command(about = inspect_about())]
    Inspect(cmd_inspect::InspectArgs),
    /// Convert a JAX ViT checkpoint, or every checkpoint under a directory, into timm, transformers, open_clip
    /// or OpenAI CLIP weights.
    #[command(name = "npz-to-pt", about = convert_about())]
    NpzToPt(cmd_convert::ConvertArgs),
    /// Run the source checkpoint and its conversion side by side on libtorch and compare their outputs
    /// (through the vitconv-verify executable beside this one).
    Verify(cmd_verify::VerifyArgs),
}

/// The formats and containers `inspect` reads, from the tensors crate's registry.
fn inspect_about() -> String {
    format!(
        "List the tensors of a tensor file or JAX checkpoint ({}) and say what model they hold",
        vitconv_tensors::containers().collect::<Vec<_>>().join(", ")
    )
}

/// The families and containers `npz-to-pt` converts from, from the two registries.
fn convert_about() -> String {
    format!(
        "Convert a JAX ViT checkpoint, or every checkpoint under a directory, into timm, transformers, open_clip or OpenAI CLIP weights (a .safetensors/.pt file or a self-contained folder). Families: {}. Containers: {}",
        vitconv_convert::sources::described()
            .collect::<Vec<_>>()
            .join("; "),
        vitconv_tensors::containers().collect::<Vec<_>>().join(", "),
    )
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version to stdout with exit 0; usage errors exit 2.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Inspect(args) => cmd_inspect::run(args),
        Command::NpzToPt(args) => cmd_convert::run(args),
        Command::Verify(args) => cmd_verify::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vitconv: error: {}", report::one_line(&err));
            ExitCode::from(2)
        }
    }
}
