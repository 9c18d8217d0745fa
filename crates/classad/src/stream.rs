//! Hook stream framing: what the JobRouter writes to a hook's stdin.
//!
//! Ads are separated by a line that is exactly `------` (`"\n------\n"` in
//! `JobRouterHookMgr.cpp`). The translate hook gets a one-line new-syntax route ad, the
//! separator, then the job ad in old syntax; the finalize hook gets the original ad, the
//! separator and the routed ad. CRLF line ends, blank lines and a missing final newline are
//! accepted.

use crate::ad::ClassAd;
use crate::error::ParseError;
use crate::parser::{parse_new_ad, parse_old_ad};

/// The separator line between ads.
pub const SEPARATOR: &str = "------";

/// Largest hook input accepted (a job ad is a few KiB; this bounds a runaway writer).
pub const MAX_STREAM_BYTES: usize = 16 << 20;

/// One ad of a hook stream and the syntax it was written in.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAd {
    /// The ad.
    pub ad: ClassAd,
    /// True when it was a new-syntax `[ ... ]` ad (the translate hook's route line).
    pub new_syntax: bool,
}

/// A hook stream that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// An ad did not parse; line numbers count from the start of the whole stream.
    #[error("ad {index} of the hook input: {source}")]
    Parse {
        /// 1-based position of the ad in the stream.
        index: usize,
        /// The parse failure.
        #[source]
        source: Box<ParseError>,
    },
    /// The input exceeds [`MAX_STREAM_BYTES`].
    #[error("hook input is {size} bytes, more than the {MAX_STREAM_BYTES} accepted")]
    TooLarge {
        /// Bytes received.
        size: usize,
    },
}

/// Split `text` at separator lines and parse each part (empty parts are skipped).
///
/// # Errors
/// [`StreamError`] naming the ad and the line of the first parse failure.
pub fn parse_hook_stream(text: &str) -> Result<Vec<StreamAd>, StreamError> {
    if text.len() > MAX_STREAM_BYTES {
        return Err(StreamError::TooLarge { size: text.len() });
    }
    let mut ads = Vec::new();
    let mut part_start = 0;
    let mut offset = 0;
    let mut parts = Vec::new();
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == SEPARATOR {
            parts.push((part_start, offset));
            part_start = offset + line.len();
        }
        offset += line.len();
    }
    parts.push((part_start, text.len()));
    for (start, end) in parts {
        let part = text.get(start..end).unwrap_or("");
        if part.trim().is_empty() {
            continue;
        }
        // Pad with the newlines before the part so error lines count from the stream start.
        let lines_before = text.get(..start).map_or(0, |t| t.matches('\n').count());
        let padded = format!("{}{}", "\n".repeat(lines_before), part);
        let index = ads.len() + 1;
        let new_syntax = part.trim_start().starts_with('[');
        let parsed = if new_syntax {
            parse_new_ad(&padded)
        } else {
            parse_old_ad(&padded)
        };
        let ad = parsed.map_err(|source| StreamError::Parse {
            index,
            source: Box::new(source),
        })?;
        ads.push(StreamAd { ad, new_syntax });
    }
    Ok(ads)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn translate_input_with_route_line() {
        let text =
            "[ Name = \"VM\"; TargetUniverse = 13 ]\n------\nArgs = \"a b\"\nClusterId = 12\n";
        let ads = parse_hook_stream(text).unwrap();
        assert_eq!(ads.len(), 2);
        assert!(ads[0].new_syntax);
        assert!(ads[0].ad.contains("TargetUniverse"));
        assert_eq!(ads[1].ad.len(), 2);
    }

    #[test]
    fn crlf_blank_lines_and_no_final_newline() {
        let text = "A = 1\r\n\r\n------\r\nB = \"x\"";
        let ads = parse_hook_stream(text).unwrap();
        assert_eq!(ads.len(), 2);
        assert_eq!(ads[1].ad.get("b").unwrap().as_str(), Some("x"));
    }

    #[test]
    fn errors_count_lines_from_stream_start() {
        let text = "A = 1\n------\nB = 2\nC = (\n";
        let err = parse_hook_stream(text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ad 2"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("attribute C"), "{msg}");
    }

    #[test]
    fn five_dashes_are_not_a_separator() {
        let err = parse_hook_stream("A = 1\n-----\nB = 2\n").unwrap_err();
        assert!(err.to_string().contains("line 2"));
    }
}
