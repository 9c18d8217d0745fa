//! Where `template build` keeps root file systems and downloaded packages between builds,
//! and the directories it writes the template into.
//!
//! # Security
//! Root unpacks the cached tarball as the image's root file system and writes logs under
//! predictable names there, so the cache must be a directory no other user can write: never
//! the shared temp dir. The default is `$XDG_CACHE_HOME/vm-capsule/template-build`, else
//! `~/.cache/vm-capsule/template-build`; with neither variable set (`env -i`, a service unit)
//! the build refuses and says to pass `--cache`. The cache and every directory above it are
//! checked as the scratch prefix is ([`vm_capsule_core::scratch::open_own_dir`]): missing parts are
//! created with mode 0700, and a directory another user made or can write is refused, never
//! repaired.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::BuildError;

/// The cache's path below `$XDG_CACHE_HOME` (or `~/.cache`).
pub const CACHE_SUBDIR: &str = "vm-capsule/template-build";

/// The default cache from `XDG_CACHE_HOME` and `HOME` (their values, if set); the XDG
/// specification ignores a relative `XDG_CACHE_HOME`, and so do we.
///
/// # Errors
/// [`BuildError::NoCache`] when neither gives an absolute directory.
pub fn default_cache(
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, BuildError> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_cache_home)
        .or_else(|| absolute(home).map(|h| h.join(".cache")))
        .map(|base| base.join(CACHE_SUBDIR))
        .ok_or(BuildError::NoCache)
}

/// Make sure `cache` (absolute) is a directory of ours nobody else can write, creating what
/// is missing of it (mode 0700).
///
/// # Errors
/// [`BuildError::UnsafeCache`] naming the directory at fault.
pub fn open_cache(cache: &Path) -> Result<(), BuildError> {
    vm_capsule_core::scratch::open_own_dir(cache, 0o700)
        .map(drop)
        .map_err(|problem| BuildError::UnsafeCache {
            cache: cache.to_owned(),
            problem,
        })
}

/// Make sure `dir` (the template directory or one in it) is ours and nobody else can write
/// it, creating what is missing (mode 0755: the hooks, running as every job owner, read it).
///
/// # Errors
/// [`BuildError::UnsafeOutput`] naming the directory at fault.
pub fn open_output(dir: &Path) -> Result<(), BuildError> {
    vm_capsule_core::scratch::open_own_dir(dir, 0o755)
        .map(drop)
        .map_err(|problem| BuildError::UnsafeOutput {
            dir: dir.to_owned(),
            problem,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_default_cache_is_never_the_temp_dir() {
        assert_eq!(
            default_cache(Some("/x/cache".into()), Some("/home/a".into())).unwrap(),
            PathBuf::from("/x/cache/vm-capsule/template-build")
        );
        assert_eq!(
            default_cache(Some("relative".into()), Some("/home/a".into())).unwrap(),
            PathBuf::from("/home/a/.cache/vm-capsule/template-build")
        );
        let e = default_cache(None, None).unwrap_err().to_string();
        assert!(
            e.contains("neither XDG_CACHE_HOME nor HOME") && e.contains("--cache"),
            "{e}"
        );
        assert!(default_cache(None, Some("".into())).is_err());
    }

    #[test]
    fn missing_parts_are_made_private_and_open_ones_refused() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("a/b/cache");
        open_cache(&cache).unwrap();
        for p in [d.path().join("a"), d.path().join("a/b"), cache.clone()] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", p.display());
        }
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_cache(&cache).unwrap_err().to_string();
        assert!(
            e.contains("others can write it") && e.contains("--cache"),
            "{e}"
        );
        let out = d.path().join("tpl/condor_vm_capsule");
        open_output(&out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(open_cache(Path::new("relative/cache")).is_err());
    }
}
