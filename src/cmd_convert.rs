//! `vitconv convert`: placeholder until its issue lands.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ConvertArgs {}

pub fn run(_args: ConvertArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
