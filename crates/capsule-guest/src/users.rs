//! The account the job runs as, read straight from `/etc/passwd` and `/etc/group`.
//!
//! No NSS: a static binary cannot load NSS modules, and a minimal guest has only these files.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// An account from `/etc/passwd`, with its supplementary groups from `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (the primary one first).
    pub groups: Vec<u32>,
}

/// Find `user`, or `fallback` when `user` does not exist, in `etc/passwd` + `etc/group`.
/// Refuses an account with uid 0: a job never runs as root.
pub fn resolve(etc: &Path, user: &str, fallback: Option<&str>) -> Result<Account> {
    let passwd_path = etc.join("passwd");
    let passwd = fs::read_to_string(&passwd_path)
        .with_context(|| format!("cannot read {}", passwd_path.display()))?;
    // A missing /etc/group only costs the supplementary groups.
    let group = fs::read_to_string(etc.join("group")).unwrap_or_default();
    let account = match find(&passwd, &group, user) {
        Some(a) => a,
        None => match fallback.and_then(|f| find(&passwd, &group, f)) {
            Some(a) => a,
            None => bail!(
                "neither user '{user}' nor fallback {} exists in {}; hint: add the account to the guest image",
                fallback.map_or_else(|| "(none)".to_owned(), |f| format!("'{f}'")),
                passwd_path.display()
            ),
        },
    };
    if account.uid == 0 {
        bail!(
            "user '{}' has uid 0 in {}; capsule-init never runs a job as root",
            account.name,
            passwd_path.display()
        );
    }
    Ok(account)
}

/// Look `name` up in the text of `/etc/passwd` and `/etc/group`.
fn find(passwd: &str, group: &str, name: &str) -> Option<Account> {
    let (uid, gid) = passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })?;
    let mut groups = vec![gid];
    for line in group.lines() {
        let mut f = line.split(':');
        let (Some(_), Some(_), Some(g), Some(members)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Ok(g) = g.parse::<u32>() else { continue };
        if members.split(',').any(|m| m.trim() == name) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Some(Account {
        name: name.to_owned(),
        uid,
        gid,
        groups,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        broken:x:notanumber:1::/:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
        condor:x:1000:1000::/home/condor:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\ncondor:x:1000:\nvideo:x:44:alice,condor\nbad\naudio:x:29:condorx\n";

    #[test]
    fn finds_user_and_supplementary_groups() {
        let a = find(PASSWD, GROUP, "condor").unwrap();
        assert_eq!(
            a,
            Account {
                name: "condor".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 44]
            }
        );
        assert!(find(PASSWD, GROUP, "broken").is_none());
        assert!(find(PASSWD, GROUP, "cond").is_none());
    }

    #[test]
    fn falls_back_and_refuses_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        fs::write(dir.path().join("group"), GROUP).unwrap();
        assert_eq!(
            resolve(dir.path(), "alice", Some("nobody")).unwrap().uid,
            65534
        );
        let e = resolve(dir.path(), "alice", None).unwrap_err().to_string();
        assert!(
            e.contains("neither user 'alice' nor fallback (none)"),
            "{e}"
        );
        let e = resolve(dir.path(), "root", None).unwrap_err().to_string();
        assert!(e.contains("never runs a job as root"), "{e}");
    }
}
