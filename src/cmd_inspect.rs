//! `vitconv inspect`: placeholder until its issue lands.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InspectArgs {}

pub fn run(_args: InspectArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
