//! The packages' maintainer scripts refuse removal and upgrades while jobs routed through
//! vm-capsule are in the queue (their finalize hook would be gone, and their outputs with it),
//! and warn but go ahead when they cannot tell. Run with a STAND-IN condor_q on PATH (no
//! schedd can run here): the scripts of the built packages when testing a package, else the
//! ones packaging/maintainer-scripts.sh writes for them.

use crate::router::repo;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run_ok;
use crate::router::installed_root;

/// The four scripts: deb preinst and prerm, rpm %pre and %preun bodies.
struct Scripts {
    preinst: PathBuf,
    prerm: PathBuf,
    rpm_pre: PathBuf,
    rpm_preun: PathBuf,
}

fn built(dist: &Path, ext: &str) -> PathBuf {
    fs::read_dir(dist)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/dist.sh builds the packages)",
                dist.display()
            )
        })
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .unwrap_or_else(|| panic!("no .{ext} in {}", dist.display()))
}

fn scripts(dir: &Path) -> Scripts {
    let out = dir.join("scripts");
    if installed_root().is_some() {
        // The packages under test.
        let dist = repo().join("target/dist");
        fs::create_dir_all(&out).unwrap();
        run_ok(
            Command::new("dpkg-deb")
                .arg("-e")
                .arg(built(&dist, "deb"))
                .arg(out.join("deb")),
        );
        fs::create_dir_all(out.join("rpm")).unwrap();
        for (tag, name) in [("PREIN", "pre"), ("PREUN", "preun")] {
            let body = run_ok(
                Command::new("rpm")
                    .args(["-qp", "--qf", &format!("%{{{tag}}}")])
                    .arg(built(&dist, "rpm")),
            );
            fs::write(out.join("rpm").join(name), body.stdout).unwrap();
        }
    } else {
        run_ok(
            Command::new("bash")
                .arg(repo().join("packaging/maintainer-scripts.sh"))
                .arg(&out),
        );
    }
    Scripts {
        preinst: out.join("deb/preinst"),
        prerm: out.join("deb/prerm"),
        rpm_pre: out.join("rpm/pre"),
        rpm_preun: out.join("rpm/preun"),
    }
}

/// What the schedd the stand-in plays says.
#[derive(Clone, Copy, Debug)]
enum Schedd {
    /// Two routed jobs in the queue.
    Jobs,
    /// No routed job.
    Empty,
    /// condor_q cannot reach it.
    Down,
    /// There is no condor_q at all.
    NoCondorQ,
}

/// How a script run ended: exit code, stderr, condor_q's arguments if it was called.
struct Run {
    code: i32,
    stderr: String,
    condor_q: Option<String>,
}

struct Machine {
    dir: PathBuf,
    tools: PathBuf,
    standin: PathBuf,
}

impl Machine {
    fn new(dir: &Path) -> Machine {
        // Only the tools the scripts use, so that a real condor_q on this machine cannot
        // answer in the stand-in's place.
        let tools = dir.join("tools");
        fs::create_dir_all(&tools).unwrap();
        for tool in ["timeout", "mktemp", "head", "wc", "tr", "rm"] {
            let real = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} is needed"));
            std::os::unix::fs::symlink(real, tools.join(tool)).unwrap();
        }
        let standin = dir.join("standin");
        fs::create_dir_all(&standin).unwrap();
        let q = standin.join("condor_q");
        fs::write(
            &q,
            "#!/bin/sh\n# STAND-IN for condor_q (no schedd runs here): records its arguments and answers\n# as $STANDIN_SCHEDD says.\nprintf '%s\\n' \"$@\" > \"$STANDIN_LOG\"\ncase \"$STANDIN_SCHEDD\" in\n    Jobs) printf '1012 0 11.0 alice\\n1013 0 11.1 bob\\n' ;;\n    Empty) ;;\n    *) echo \"Error: communication error\" >&2; echo \"-- Failed to fetch ads from: <127.0.0.1:9618>\" >&2; exit 1 ;;\nesac\n",
        )
        .unwrap();
        fs::set_permissions(&q, fs::Permissions::from_mode(0o755)).unwrap();
        Machine {
            dir: dir.to_owned(),
            tools,
            standin,
        }
    }

    fn run(&self, script: &Path, args: &[&str], schedd: Schedd, ignore: bool) -> Run {
        let log = self.dir.join("condor_q.args");
        let _ = fs::remove_file(&log);
        let path = match schedd {
            Schedd::NoCondorQ => self.tools.display().to_string(),
            _ => format!("{}:{}", self.standin.display(), self.tools.display()),
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(script)
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("STANDIN_SCHEDD", format!("{schedd:?}"))
            .env("STANDIN_LOG", &log);
        if ignore {
            cmd.env("VM_CAPSULE_IGNORE_ROUTED_JOBS", "1");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Run {
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            condor_q: fs::read_to_string(&log).ok(),
        }
    }
}

#[test]
fn removal_and_upgrades_wait_for_routed_jobs() {
    let t = tempfile::tempdir().unwrap();
    let s = scripts(t.path());
    let m = Machine::new(t.path());
    // (script, arguments): each removes or replaces the hooks.
    let checking: [(&Path, &[&str]); 6] = [
        (&s.prerm, &["remove"]),
        (&s.prerm, &["upgrade", "0.2.0"]),
        (&s.prerm, &["failed-upgrade", "0.1.0"]),
        (&s.preinst, &["upgrade", "0.1.0", "0.2.0"]),
        (&s.rpm_pre, &["2"]),
        (&s.rpm_preun, &["0"]),
    ];
    for (script, args) in checking {
        let what = format!("{} {args:?}", script.display());
        let run = m.run(script, args, Schedd::Jobs, false);
        assert_eq!(run.code, 1, "{what}: {}", run.stderr);
        for needle in [
            "refusing to",
            "2 job(s) routed through vm-capsule",
            "1012.0  11.0  alice",
            "1013.0  11.1  bob",
            "JOB_ROUTER_MAX_JOBS = 0",
            "VM_CAPSULE_IGNORE_ROUTED_JOBS=1",
        ] {
            assert!(
                run.stderr.contains(needle),
                "{what}: {needle}: {}",
                run.stderr
            );
        }
        let asked = run.condor_q.unwrap();
        assert!(
            asked.starts_with("-allusers\n-constraint\nVMCapsuleOriginalJob =!= undefined\n"),
            "{what}: {asked}"
        );
        // The documented override goes ahead, and says so.
        let run = m.run(script, args, Schedd::Jobs, true);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains("VM_CAPSULE_IGNORE_ROUTED_JOBS=1"),
            "{what}"
        );
        assert!(run.condor_q.is_none(), "{what}");
        // No routed job: silent.
        let run = m.run(script, args, Schedd::Empty, false);
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{what}");
        // Cannot tell: a warning that says what to do, and the package manager goes on.
        let run = m.run(script, args, Schedd::Down, false);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains("warning")
                && run.stderr.contains("cannot tell")
                && run.stderr.contains("Error: communication error")
                && run.stderr.contains("drain them first"),
            "{what}: {}",
            run.stderr
        );
        let run = m.run(script, args, Schedd::NoCondorQ, false);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains("condor_q not found") && run.stderr.contains("drain them first"),
            "{what}: {}",
            run.stderr
        );
    }
    // What does not take the hooks away does not ask.
    let quiet: [(&Path, &[&str]); 5] = [
        (&s.preinst, &["install"]),
        (&s.preinst, &["abort-upgrade", "0.2.0"]),
        (&s.prerm, &["deconfigure", "in-favour", "x", "1"]),
        (&s.rpm_pre, &["1"]),
        (&s.rpm_preun, &["1"]),
    ];
    for (script, args) in quiet {
        let run = m.run(script, args, Schedd::Jobs, false);
        assert_eq!(
            (run.code, run.stderr.as_str(), run.condor_q.is_none()),
            (0, "", true),
            "{} {args:?}",
            script.display()
        );
    }
}
