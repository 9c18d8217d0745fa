//! `vm-capsule`: the command line front end (hooks, disk tools, ClassAd tools).
//!
//! The binary stays thin: parse arguments, dispatch to one `cli` module, map the result to
//! an exit code in one place, so the libraries never print or exit and every exit code is
//! chosen where it can be seen with the others.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use vm_capsule_core::environment::Environment;

/// clap's exit code for a command line it cannot use.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Hooks are run by path with no arguments: `vm-capsule-translate` means `translate`.
    let argv = vm_capsule_admin::snippet::command_line(std::env::args_os().collect());
    if argv.len() == 1 {
        eprintln!("{}", no_command(&argv[0]));
        return ExitCode::from(EXIT_USAGE);
    }
    let args = cli::Cli::parse_from(argv);
    // The one place the environment is read; everything below is handed what it needs.
    let env = Environment::from_parts(
        std::env::vars_os(),
        std::env::current_exe().ok(),
        std::env::temp_dir(),
    );
    match cli::run(args, &env) {
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

/// What to say when started with no command: most often by HTCondor's startd cron, which
/// passes the cron job's name as argv[0] and only `STARTD_CRON_<NAME>_ARGS` after it.
fn no_command(argv0: &std::ffi::OsStr) -> String {
    let name = argv0.to_string_lossy();
    let hint = if name.contains('/') {
        String::new()
    } else {
        format!(
            " HTCondor's startd cron passes the cron job's name as argv[0]: if `{name}` is one, give the command as its argument: STARTD_CRON_{name}_EXECUTABLE = <path of vm-capsule>, STARTD_CRON_{name}_ARGS = probe."
        )
    };
    format!(
        "vm-capsule: error: started as `{name}` with no command (try `vm-capsule --help`).{hint}"
    )
}

/// True when the error chain bottoms out in a broken pipe on stdout.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
