//! `vm-capsule generate`: man pages and shell completions from the clap definitions, the
//! `vm-capsule-knobs(5)` page and the Markdown knob table from the knob table, for the
//! packages (`scripts/dist.sh`) and the docs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Arguments of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Write `vm-capsule.1` and `vm-capsule-<command>.1` here.
    #[arg(long, value_name = "DIR")]
    man_dir: Option<PathBuf>,
    /// Write bash, zsh and fish completions here.
    #[arg(long, value_name = "DIR")]
    completions_dir: Option<PathBuf>,
    /// Print the knob table as Markdown, as README.md and docs/ADMIN.md carry it.
    #[arg(long)]
    knobs_markdown: bool,
}

/// Write what was asked for.
pub fn run_generate(args: &GenerateArgs) -> Result<ExitCode> {
    let cmd = super::Cli::command();
    if let Some(dir) = &args.man_dir {
        create(dir)?;
        man_pages(&cmd, dir)?;
        let path = dir.join("vm-capsule-knobs.5");
        let page = vm_capsule_core::settings::docs::man_page(env!("CARGO_PKG_VERSION"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.knobs_markdown {
        print!("{}", vm_capsule_core::settings::docs::markdown());
    }
    if let Some(dir) = &args.completions_dir {
        create(dir)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            clap_complete::generate_to(shell, &mut cmd, "vm-capsule", dir).with_context(|| {
                format!("cannot write {shell} completions to {}", dir.display())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One page for the program and one per visible subcommand, as `git` has.
fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    let write = |cmd: clap::Command, name: &str| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .with_context(|| format!("cannot render {name}.1"))?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))
    };
    write(cmd.clone(), "vm-capsule")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("vm-capsule-{}", sub.get_name());
        // The page's NAME line and synopsis show the full command.
        let sub = sub
            .clone()
            .name(name.clone())
            .version(cmd.get_version().unwrap_or_default().to_owned());
        write(sub, &name)?;
    }
    Ok(())
}

fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
