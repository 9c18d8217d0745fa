//! Checks for paths and names that come from the manifest or the result.

/// Longest relative path accepted, in bytes (Linux `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;
/// Longest single component accepted, in bytes (Linux `NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

/// Check that `path` is a clean path relative to the work dir: not empty, not absolute, no
/// `.`/`..`/empty components, no NUL, at most 4096 bytes with components of at most 255.
/// A single trailing `/` is allowed when `allow_trailing_slash` (HTCondor's "dir/" form).
///
/// # Errors
///
/// Returns the reason the path is refused, for use in a message.
pub fn check_relative_path(path: &str, allow_trailing_slash: bool) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err("the path is absolute; it must be relative to the work dir".into());
    }
    let body = match path.strip_suffix('/') {
        Some(b) if allow_trailing_slash => b,
        Some(_) => return Err("the path ends with '/'".into()),
        None => path,
    };
    for comp in body.split('/') {
        match comp {
            "" => return Err("the path has an empty component ('//' or a trailing '/')".into()),
            "." | ".." => {
                return Err(format!(
                    "the path has a '{comp}' component; it must stay inside the work dir"
                ))
            }
            c if c.len() > MAX_NAME_BYTES => {
                return Err(format!("a component is longer than {MAX_NAME_BYTES} bytes"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Check that `name` is a plain file name: a valid relative path of exactly one component.
///
/// # Errors
///
/// Returns the reason the name is refused, for use in a message.
pub fn check_file_name(name: &str) -> Result<(), String> {
    check_relative_path(name, false)?;
    if name.contains('/') {
        return Err("a plain file name may not contain '/'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
            "/////////..",
            long.as_str(),
        ] {
            assert!(
                check_relative_path(bad, true).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(check_relative_path("dir/", false).is_err());
        assert!(check_relative_path("dir//", true).is_err());
    }

    #[test]
    fn clean_paths_are_accepted() {
        for good in ["a", "a/b/c", "with space", "..hidden", "a.b", "dir/"] {
            assert_eq!(check_relative_path(good, true), Ok(()), "{good:?}");
        }
        assert!(check_file_name("stdout").is_ok());
        assert!(check_file_name("a/b").is_err());
    }
}
