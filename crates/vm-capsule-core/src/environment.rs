//! The process environment, read once by the binary at its edge and passed down: library code
//! never reads `std::env`, so what a hook, the launcher or a check sees is what its caller
//! gave it (and a test gives it any environment it likes).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::condor_tools::ToolSearch;

/// The environment variables vm-capsule uses, each as it was found, and the running program.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Every variable whose name and value are text: the `_CONDOR_<KNOB>` overrides that
    /// [`crate::settings::Settings`] reads come from here.
    pub vars: Vec<(String, String)>,
    /// `PATH`: where QEMU, `virsh` and HTCondor's tools are looked for.
    pub path: Option<OsString>,
    /// `CONDOR_CONFIG`: the HTCondor configuration the tools read.
    pub condor_config: Option<OsString>,
    /// `CONDOR_INHERIT`: set by the HTCondor daemon that started us (its pid first).
    pub condor_inherit: Option<String>,
    /// `_CONDOR_BIN`: HTCondor's `BIN`, overridden.
    pub condor_bin: Option<OsString>,
    /// `_CONDOR_RELEASE_DIR`: HTCondor's `RELEASE_DIR`, overridden.
    pub condor_release_dir: Option<OsString>,
    /// `CONDOR_IDS`: HTCondor's own account, `uid.gid`.
    pub condor_ids: Option<String>,
    /// `_CONDOR_CHIRP_CONFIG`: the Chirp configuration the starter wrote for the job.
    pub chirp_config: Option<OsString>,
    /// `_CONDOR_JOB_AD`: the job ad the starter wrote for the job.
    pub job_ad: Option<OsString>,
    /// `_CONDOR_MACHINE_AD`: the slot's ad the starter wrote for the job.
    pub machine_ad: Option<OsString>,
    /// `USER`.
    pub user: Option<String>,
    /// `HOME`.
    pub home: Option<OsString>,
    /// `XDG_CACHE_HOME`.
    pub xdg_cache_home: Option<OsString>,
    /// The running program, when the system says.
    pub current_exe: Option<PathBuf>,
    /// The directory for temporary files (`TMPDIR`, else `/tmp`).
    pub temp_dir: PathBuf,
}

impl Environment {
    /// The environment made of `vars` (all of the process's variables, as the system gives
    /// them), the running program `current_exe` and the temp dir `temp_dir`.
    pub fn from_parts(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
        current_exe: Option<PathBuf>,
        temp_dir: PathBuf,
    ) -> Environment {
        let mut env = Environment {
            current_exe,
            temp_dir,
            ..Environment::default()
        };
        for (name, value) in vars {
            let text = value.to_str().map(str::to_owned);
            match name.to_str() {
                Some("PATH") => env.path = Some(value.clone()),
                Some("CONDOR_CONFIG") => env.condor_config = Some(value.clone()),
                Some("CONDOR_INHERIT") => env.condor_inherit.clone_from(&text),
                Some("_CONDOR_BIN") => env.condor_bin = Some(value.clone()),
                Some("_CONDOR_RELEASE_DIR") => env.condor_release_dir = Some(value.clone()),
                Some("CONDOR_IDS") => env.condor_ids.clone_from(&text),
                Some("_CONDOR_CHIRP_CONFIG") => env.chirp_config = Some(value.clone()),
                Some("_CONDOR_JOB_AD") => env.job_ad = Some(value.clone()),
                Some("_CONDOR_MACHINE_AD") => env.machine_ad = Some(value.clone()),
                Some("USER") => env.user.clone_from(&text),
                Some("HOME") => env.home = Some(value.clone()),
                Some("XDG_CACHE_HOME") => env.xdg_cache_home = Some(value.clone()),
                _ => {}
            }
            if let (Some(name), Some(value)) = (name.to_str(), text) {
                env.vars.push((name.to_owned(), value));
            }
        }
        env
    }

    /// `PATH`, for a function that only looks programs up.
    pub fn path(&self) -> Option<&OsStr> {
        self.path.as_deref()
    }

    /// HTCondor's account's uid, from `CONDOR_IDS` (`uid.gid`), when set and a number.
    pub fn condor_uid(&self) -> Option<u32> {
        self.condor_ids
            .as_deref()
            .and_then(|ids| ids.split('.').next().and_then(|u| u.trim().parse().ok()))
    }

    /// Where this process looks for HTCondor's tools.
    pub fn tool_search(&self) -> ToolSearch {
        ToolSearch::new(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_parts(
            pairs.iter().map(|(k, v)| (k.into(), v.into())),
            None,
            "/tmp".into(),
        )
    }

    #[test]
    fn each_variable_lands_in_its_field() {
        let e = env(&[
            ("PATH", "/a:/b"),
            ("CONDOR_CONFIG", "/etc/c"),
            ("CONDOR_INHERIT", "123 <1.2.3.4:5> 0"),
            ("CONDOR_IDS", "64.65"),
            ("_CONDOR_CHIRP_CONFIG", "/s/.chirp.config"),
            ("_CONDOR_JOB_AD", "/s/.job.ad"),
            ("USER", "alice"),
            ("_CONDOR_VM_CAPSULE_TEMPLATE", "/t"),
        ]);
        assert_eq!(e.path(), Some(OsStr::new("/a:/b")));
        assert_eq!(e.condor_config, Some("/etc/c".into()));
        assert_eq!(e.condor_uid(), Some(64));
        assert_eq!(e.chirp_config, Some("/s/.chirp.config".into()));
        assert_eq!(e.job_ad, Some("/s/.job.ad".into()));
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert_eq!(e.tool_search().daemon_pid, Some(123));
        assert!(e
            .vars
            .contains(&("_CONDOR_VM_CAPSULE_TEMPLATE".to_owned(), "/t".to_owned())));
        assert_eq!(env(&[("CONDOR_IDS", "condor")]).condor_uid(), None);
    }

    #[test]
    fn a_value_that_is_not_text_is_kept_where_bytes_do() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"/x\xff".to_vec());
        let e = Environment::from_parts(
            [("PATH".into(), odd.clone()), ("USER".into(), odd.clone())],
            None,
            "/tmp".into(),
        );
        assert_eq!(e.path, Some(odd));
        assert_eq!(e.user, None);
        assert!(e.vars.is_empty());
    }
}
