//! `vm-capsule ad`: format and evaluate ClassAds.

use std::process::ExitCode;

use clap::Subcommand;

/// ClassAd tools.
#[derive(Debug, Subcommand)]
pub enum AdCommand {}

/// Run an `ad` subcommand.
pub fn run(cmd: AdCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
