//! Who a hook runs as. The JobRouter always runs hooks as the job's owner; a hook running as
//! root (it would pack files like `/etc/shadow` into a capsule) or as another user is refused,
//! unless the explicit test knob `VM_CAPSULE_TEST_ANY_USER` says otherwise.

use nix::unistd::{Uid, User};

/// The knob that lifts the check, for errors.
const TEST_KNOB: &str = crate::settings::knobs::TEST_ANY_USER.name;

/// Why the hook must not act for this job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Running as root.
    #[error("refusing to run as root: the JobRouter runs hooks as the job's owner ({owner}); run the hook as that user ({TEST_KNOB} is for tests only)")]
    Root {
        /// The job's owner.
        owner: String,
    },
    /// `Owner` is not an account here.
    #[error("the job's Owner {owner:?} is not a user on this machine")]
    UnknownOwner {
        /// The job's owner.
        owner: String,
    },
    /// Running as someone else.
    #[error("the hook runs as uid {running} but the job's Owner {owner} is uid {owner_uid}; the JobRouter runs hooks as the job's owner")]
    OtherUser {
        /// The job's owner.
        owner: String,
        /// Their uid.
        owner_uid: u32,
        /// Ours.
        running: u32,
    },
}

/// Become user `uid` for good: its groups, its group, then its uid (what root does to run
/// another user's routed ad with that user's rights, as HTCondor would). Returns the user's
/// name.
///
/// Supplementary groups come from `/etc/group` only (a static binary cannot ask other name
/// services): a directory-service group is missing, which gives fewer rights, never more.
///
/// # Errors
/// The user is unknown, or a call fails; the message says which.
pub fn become_user(uid: u32) -> Result<String, String> {
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|e| format!("cannot look up uid {uid}: {e}"))?
        .ok_or_else(|| format!("uid {uid} is not a user on this machine"))?;
    let mut groups = vec![user.gid];
    let listed = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups.extend(local_groups(&listed, &user.name).map(nix::unistd::Gid::from_raw));
    nix::unistd::setgroups(&groups)
        .map_err(|e| format!("cannot take the groups of {}: {e}", user.name))?;
    nix::unistd::setgid(user.gid).map_err(|e| format!("cannot become group {}: {e}", user.gid))?;
    nix::unistd::setuid(user.uid).map_err(|e| format!("cannot become {}: {e}", user.name))?;
    // Nothing of root may be left: a way back would undo the point.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(format!(
            "still able to become root after becoming {}",
            user.name
        ));
    }
    Ok(user.name)
}

/// The gids `/etc/group` (its text) lists `user` in.
fn local_groups<'a>(text: &'a str, user: &'a str) -> impl Iterator<Item = u32> + 'a {
    text.lines().filter_map(move |line| {
        let mut f = line.split(':');
        let (_, _, gid, members) = (f.next()?, f.next()?, f.next()?, f.next()?);
        members
            .split(',')
            .any(|m| m.trim() == user)
            .then(|| gid.parse().ok())
            .flatten()
    })
}

/// Check that this process runs as `owner` (always true when `allow_any` is set).
///
/// # Errors
/// [`IdentityError`] naming both identities.
pub fn check_runs_as(owner: &str, allow_any: bool) -> Result<(), IdentityError> {
    if allow_any {
        return Ok(());
    }
    let running = Uid::effective();
    if running.is_root() {
        return Err(IdentityError::Root {
            owner: owner.to_owned(),
        });
    }
    let user =
        User::from_name(owner)
            .ok()
            .flatten()
            .ok_or_else(|| IdentityError::UnknownOwner {
                owner: owner.to_owned(),
            })?;
    if user.uid != running {
        return Err(IdentityError::OtherUser {
            owner: owner.to_owned(),
            owner_uid: user.uid.as_raw(),
            running: running.as_raw(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_groups_are_the_ones_listing_the_user() {
        let text =
            "root:x:0:\nkvm:x:104:alice,bob\nstaff:x:50:bob\nbad:x:nan:alice\ndev:x:60: alice\n";
        assert_eq!(local_groups(text, "alice").collect::<Vec<_>>(), [104, 60]);
        assert_eq!(local_groups(text, "bob").collect::<Vec<_>>(), [104, 50]);
        assert_eq!(local_groups(text, "ali").count(), 0);
    }
}
