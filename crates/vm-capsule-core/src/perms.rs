//! Whether HTCondor will run a program from a path, and whether other users could swap it.
//!
//! HTCondor's `validateHookPath` (condor_utils/hook_utils.cpp) refuses a hook whose file
//! (links followed) is world-writable or not executable, or whose directory is
//! world-writable. We also refuse a world-writable ancestor without the sticky bit: anyone
//! could rename the directory away and put their own in its place.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why `dir` is no place for programs HTCondor runs, `None` when it is fine: `dir` must not
/// be world-writable, and no ancestor world-writable without the sticky bit.
pub fn unsafe_dir(dir: &Path) -> Option<String> {
    for d in dir.ancestors() {
        let Ok(meta) = fs::metadata(d) else {
            // Not made yet (we make it 0755): its parents decide.
            continue;
        };
        let mode = meta.permissions().mode();
        let world_writable = mode & 0o002 != 0;
        let sticky = mode & 0o1000 != 0;
        if d == dir && world_writable {
            return Some(format!(
                "{} is world-writable (mode {:o}): HTCondor refuses hooks in it; use a root-owned directory with mode 0755 such as /usr/libexec/vm-capsule",
                d.display(),
                mode & 0o7777
            ));
        }
        if world_writable && !sticky {
            return Some(format!(
                "{} is world-writable without the sticky bit (mode {:o}): any user could replace {} beneath it",
                d.display(),
                mode & 0o7777,
                dir.display()
            ));
        }
    }
    None
}

/// Why HTCondor would refuse to run the program at `path`, `None` when it would run it.
pub fn unsafe_program(path: &Path) -> Option<String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Some(format!(
            "{} is world-writable (mode {:o}): HTCondor refuses to run it",
            path.display(),
            mode & 0o7777
        ));
    }
    if mode & 0o111 == 0 {
        return Some(format!("{} is not executable", path.display()));
    }
    path.parent().and_then(unsafe_dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn world_writable_dir_ancestor_and_file() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let why = unsafe_dir(&open).unwrap();
        assert!(
            why.contains("world-writable") && why.contains("HTCondor refuses"),
            "{why}"
        );
        // A not-yet-made dir below it is judged by its parent chain.
        let below = open.join("hooks");
        assert!(unsafe_dir(&below)
            .unwrap()
            .contains("without the sticky bit"));
        chmod(&open, 0o1777);
        assert_eq!(
            unsafe_dir(&below),
            None,
            "a sticky parent like /tmp is fine"
        );
        let ok = t.path().join("ok");
        fs::create_dir(&ok).unwrap();
        chmod(&ok, 0o755);
        let prog = ok.join("prog");
        fs::write(&prog, "#!/bin/sh\n").unwrap();
        chmod(&prog, 0o755);
        assert_eq!(unsafe_program(&prog), None);
        chmod(&prog, 0o757);
        assert!(unsafe_program(&prog).unwrap().contains("world-writable"));
        chmod(&prog, 0o644);
        assert!(unsafe_program(&prog).unwrap().contains("not executable"));
    }
}
