//! The JobRouter hooks: translate, update, finalize and cleanup.
//!
//! Each hook is a thin shell (DESIGN.md): read stdin, run the pure logic, execute its plan,
//! print ClassAd lines on stdout. Diagnostics go to the configured log file and to stderr
//! (the JobRouter copies hook stderr into its own log).

pub mod cleanup;
pub mod finalize;
pub mod log;
pub mod place;
pub mod translate;
pub mod update;

use std::io::Read;

/// Largest stdin a hook accepts: job ads are a few KiB.
pub const MAX_STDIN: usize = classad::stream::MAX_STREAM_BYTES;

/// Read all of stdin as text, bounded.
///
/// # Errors
/// I/O errors, input over [`MAX_STDIN`], or input that is not UTF-8.
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
    String::from_utf8(bytes).map_err(|_| "stdin is not UTF-8 text".to_owned())
}

/// Print ClassAd attribute lines for the router: old syntax, sorted, one per line.
///
/// # Errors
/// A value the old syntax cannot carry.
pub fn ad_lines(ad: &classad::ClassAd) -> Result<String, classad::PrintError> {
    classad::print::ad_to_hook_string(ad)
}
