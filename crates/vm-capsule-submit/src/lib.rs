//! The JobRouter hooks: translate, update, finalize and cleanup.
//!
//! Each hook is a thin shell (docs/DESIGN.md): read stdin, run the pure logic, execute its plan,
//! print ClassAd lines on stdout. Diagnostics go to the configured log file and to stderr
//! (the JobRouter copies hook stderr into its own log).
#![forbid(unsafe_code)]

pub mod cleanup;
pub mod finalize;
pub mod log;
pub(crate) mod removed;
pub mod translate;
pub mod update;
pub mod watchdog;

use std::io::Read;

/// Largest stdin a hook accepts: job ads are a few KiB.
pub const MAX_STDIN: usize = classad::stream::MAX_STREAM_BYTES;

/// Read all of stdin as text, bounded. Bytes that are not UTF-8 (a Latin-1 `Description`,
/// say) become U+FFFD: the attributes the hooks use are checked where they are used, and one
/// stray byte elsewhere must not cost the job its hold or its terminate event.
///
/// # Errors
/// I/O errors, or input over [`MAX_STDIN`].
pub fn read_stdin(mut input: impl Read) -> Result<String, String> {
    let mut bytes = Vec::new();
    input
        .by_ref()
        .take(u64::try_from(MAX_STDIN).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    if bytes.len() > MAX_STDIN {
        return Err(format!("stdin is larger than {MAX_STDIN} bytes"));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Print ClassAd attribute lines for the router: old syntax, sorted, one per line.
///
/// # Errors
/// A value the old syntax cannot carry.
pub fn ad_lines(ad: &classad::ClassAd) -> Result<String, classad::PrintError> {
    classad::print::ad_to_hook_string(ad)
}
