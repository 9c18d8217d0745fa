//! `vm-capsule`: the command line front end (hooks, disk tools, ClassAd tools).
//!
//! The binary stays thin: parse arguments, dispatch to one `cli` module, map the result to
//! an exit code in one place (STYLE.md rule 1 and 8).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Hooks are run by path with no arguments: `vm-capsule-translate` means `translate`.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(hook) = argv.first().and_then(|a| cli::hooks::hook_from_argv0(a)) {
        argv.insert(1, hook.into());
    }
    let args = cli::Cli::parse_from(argv);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                // A closed stdout (e.g. `| head`) is not a failure of ours.
                return ExitCode::SUCCESS;
            }
            eprintln!("vm-capsule: error: {err:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

/// True when the error chain bottoms out in a broken pipe on stdout.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
