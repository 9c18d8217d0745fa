//! `VM_CAPSULE_HOST_PATHS`: the execute node's read-only host paths, as a checked list.

use capsule_manifest::node::{check_host_path, MAX_HOST_PATHS};

use super::knobs::{self as k, Knob};
use super::{Settings, SettingsError};

impl Settings {
    /// `VM_CAPSULE_HOST_PATHS`: absolute, normalised, distinct paths, not `/`, at most
    /// [`MAX_HOST_PATHS`] (empty when unset). Whether each is a directory on this node is the
    /// node's check, where it is used.
    ///
    /// # Errors
    /// [`SettingsError::BadEntry`] naming the knob, the entry and the fix.
    pub fn host_paths(&self) -> Result<Vec<String>, SettingsError> {
        self.path_list(&k::HOST_PATHS)
    }

    /// A list knob of paths: entries separated by commas and/or whitespace, as HTCondor's
    /// lists are.
    pub(super) fn path_list(&self, knob: &Knob) -> Result<Vec<String>, SettingsError> {
        let Some(value) = self.value(knob) else {
            return Ok(Vec::new());
        };
        let bad = |entry: &str, why: String| SettingsError::BadEntry {
            knob: knob.name,
            entry: entry.to_owned(),
            why,
        };
        let mut paths: Vec<String> = Vec::new();
        for entry in value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            check_host_path(entry).map_err(|why| bad(entry, why))?;
            if paths.iter().any(|p| p == entry) {
                return Err(bad(entry, "it is listed twice".to_owned()));
            }
            if let Some(p) = paths
                .iter()
                .find(|p| is_below(entry, p) || is_below(p, entry))
            {
                return Err(bad(
                    entry,
                    format!("it overlaps {p}; list only the outer one"),
                ));
            }
            if paths.len() == MAX_HOST_PATHS {
                return Err(bad(entry, format!("more than {MAX_HOST_PATHS} host paths")));
            }
            paths.push(entry.to_owned());
        }
        Ok(paths)
    }
}

/// Whether `inner` lies below `outer` (both normalised).
fn is_below(inner: &str, outer: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn paths(v: &str) -> Result<Vec<String>, SettingsError> {
        Settings::from_pairs([("VM_CAPSULE_HOST_PATHS", v)]).host_paths()
    }

    #[test]
    fn lists_are_read_like_htcondor_lists() {
        assert_eq!(
            paths("/cvmfs, /etc/grid-security/certificates").unwrap(),
            ["/cvmfs", "/etc/grid-security/certificates"]
        );
        assert_eq!(paths("/a /b,/c").unwrap(), ["/a", "/b", "/c"]);
        assert!(Settings::default().host_paths().unwrap().is_empty());
        assert!(paths("  ").unwrap().is_empty());
    }

    #[test]
    fn a_bad_entry_names_the_knob_the_entry_and_the_fix() {
        for (value, entry, why) in [
            ("/cvmfs, cvmfs", "cvmfs", "not an absolute path"),
            ("/", "/", "whole root"),
            ("/cvmfs/", "/cvmfs/", "not normalised"),
            ("/a/../etc", "/a/../etc", "'..'"),
            ("/cvmfs,/cvmfs", "/cvmfs", "twice"),
            (
                "/etc /etc/grid-security",
                "/etc/grid-security",
                "overlaps /etc",
            ),
        ] {
            let e = paths(value).unwrap_err().to_string();
            assert!(e.starts_with("VM_CAPSULE_HOST_PATHS: the entry"), "{e}");
            assert!(e.contains(&format!("{entry:?}")) && e.contains(why), "{e}");
            assert!(
                e.contains("fix: list absolute, normalised directories"),
                "{e}"
            );
        }
        let many: Vec<String> = (0..=MAX_HOST_PATHS).map(|i| format!("/p{i}")).collect();
        assert!(paths(&many.join(","))
            .unwrap_err()
            .to_string()
            .contains("more than 16"));
    }

    #[test]
    fn check_covers_the_knob() {
        let s = Settings::from_pairs([("VM_CAPSULE_HOST_PATHS", "relative")]);
        assert!(s.check(&k::HOST_PATHS).is_err());
    }
}
