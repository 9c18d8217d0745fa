//! HTCondor's configuration syntax, the subset we read: logical lines (a `\` at the end of a
//! line continues it), `NAME = value` assignments, `#` comments and `$(NAME)` expansion.
//!
//! Both the knob loader ([`crate::settings`]) and the search for HTCondor's tools
//! ([`crate::condor_tools`]) read configuration files; the syntax lives here so that neither
//! needs the other for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A line of a configuration file that is not `NAME = value`.
#[derive(Debug, Error)]
#[error("{path}:{line}: expected NAME = value, found {text:?}")]
pub struct SyntaxError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line where the logical line starts.
    pub line: usize,
    /// The logical line.
    pub text: String,
}

/// The logical lines of a configuration text: continuation lines joined, each with the 1-based
/// number of its first physical line, right-trimmed.
#[derive(Debug)]
pub struct LogicalLines<'a> {
    lines: std::iter::Enumerate<std::str::Lines<'a>>,
}

impl<'a> LogicalLines<'a> {
    /// The logical lines of `text`.
    pub fn new(text: &'a str) -> LogicalLines<'a> {
        LogicalLines {
            lines: text.lines().enumerate(),
        }
    }

    /// The next physical line, unjoined (the body of a `NAME @=tag` block).
    pub fn next_physical(&mut self) -> Option<&'a str> {
        self.lines.next().map(|(_, l)| l)
    }
}

impl Iterator for LogicalLines<'_> {
    type Item = (usize, String);

    fn next(&mut self) -> Option<(usize, String)> {
        let mut pending = String::new();
        let mut start = None;
        for (i, line) in self.lines.by_ref() {
            start.get_or_insert(i + 1);
            let line = line.trim_end();
            if let Some(stripped) = line.strip_suffix('\\') {
                pending.push_str(stripped);
                continue;
            }
            pending.push_str(line);
            return start.map(|s| (s, pending));
        }
        // A continuation on the last line ends the text.
        start.map(|s| (s, pending))
    }
}

/// Parse the HTCondor config subset and expand `$(NAME)` references (case-insensitive,
/// unknown names expand to nothing, as HTCondor does).
///
/// # Errors
/// [`SyntaxError`] for a line that is not an assignment.
pub fn parse_config(text: &str, path: &Path) -> Result<BTreeMap<String, String>, SyntaxError> {
    let mut raw: BTreeMap<String, String> = BTreeMap::new();
    for (line, full) in LogicalLines::new(text) {
        let trimmed = full.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let syntax = || SyntaxError {
            path: path.to_owned(),
            line,
            text: trimmed.to_owned(),
        };
        let (name, value) = trimmed.split_once('=').ok_or_else(syntax)?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(syntax());
        }
        let name = name.to_ascii_uppercase();
        let value = with_self_reference(&name, value.trim(), raw.get(&name).map(String::as_str));
        raw.insert(name, value);
    }
    let expanded = raw
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, &raw, 0)))
        .collect();
    Ok(expanded)
}

/// `value` assigned to `name` (upper case) with its references to `name` itself replaced by
/// `previous`, the value before this assignment, as HTCondor does (`X = $(X) more` appends);
/// other references stay for later expansion.
pub fn with_self_reference(name: &str, value: &str, previous: Option<&str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else {
            break;
        };
        out.push_str(&rest[..start]);
        if after[..end].trim().eq_ignore_ascii_case(name) {
            out.push_str(previous.unwrap_or_default());
        } else {
            out.push_str(&rest[start..start + 2 + end + 1]);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Expand `$(NAME)` in `value` from `vars` (upper-case names) as HTCondor does: unknown
/// names expand to nothing, cycles stop at a bounded depth.
pub fn expand_vars(value: &str, vars: &BTreeMap<String, String>) -> String {
    expand(value, vars, 0)
}

/// Expand `$(NAME)` in `value` from `vars`, to a bounded depth (cycles expand to nothing).
fn expand(value: &str, vars: &BTreeMap<String, String>, depth: usize) -> String {
    if depth > 16 {
        return String::new();
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim().to_ascii_uppercase();
        if let Some(v) = vars.get(&name) {
            out.push_str(&expand(v, vars, depth + 1));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_knob_that_names_itself_appends_to_its_previous_value() {
        let vars = parse_config(
            "L = a\nL = $(L) b\nl = $( l ),c $(M)\nM = m\nN = $(N)x\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(vars["L"], "a b,c m");
        assert_eq!(vars["N"], "x");
    }

    #[test]
    fn continuation_lines_join_and_keep_their_first_line_number() {
        let lines: Vec<_> = LogicalLines::new("A = 1 \\\n  2\nB = 3\nC = \\").collect();
        assert_eq!(
            lines,
            vec![
                (1, "A = 1   2".to_owned()),
                (3, "B = 3".to_owned()),
                (4, "C = ".to_owned())
            ]
        );
        let err = parse_config("A = 1\\\n2\nnot an assignment\n", Path::new("x.conf")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.conf:3: expected NAME = value, found \"not an assignment\""
        );
    }
}
