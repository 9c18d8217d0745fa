//! Errors: parse errors with a location, and printing errors.

use std::fmt;

use crate::span::{line_col, Span};

/// What went wrong while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// A character that starts no token.
    UnexpectedChar(char),
    /// A number HTCondor's lexer rejects (`5.`, `089`, `1e`).
    BadNumber,
    /// A string or quoted name without its closing quote.
    UnterminatedString,
    /// A `/*` comment without `*/`.
    UnterminatedComment,
    /// A string whose escapes produce a NUL byte.
    NulInString,
    /// A string whose escapes produce bytes that are not UTF-8.
    InvalidUtf8,
    /// A token the grammar does not allow here.
    Unexpected {
        /// What was found.
        found: String,
        /// What the grammar wanted.
        expected: &'static str,
    },
    /// Nesting deeper than the parser's limit.
    TooDeep,
    /// Input larger than the parser's limit.
    TooLong,
    /// An old-syntax line that is not `Name = expression`.
    NotAnAssignment,
    /// An attribute name that is not a plain identifier in old syntax.
    BadAttributeName(String),
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::UnexpectedChar(c) => write!(f, "unexpected character {c:?}"),
            ParseErrorKind::BadNumber => write!(
                f,
                "malformed number (a '.' or exponent needs digits after it; leading-zero integers may only use digits 0-7)"
            ),
            ParseErrorKind::UnterminatedString => write!(f, "string or quoted name is not closed"),
            ParseErrorKind::UnterminatedComment => write!(f, "comment is not closed with */"),
            ParseErrorKind::NulInString => write!(f, "string contains a NUL character"),
            ParseErrorKind::InvalidUtf8 => write!(f, "string escapes do not form valid UTF-8"),
            ParseErrorKind::Unexpected { found, expected } => {
                write!(f, "expected {expected}, found {found}")
            }
            ParseErrorKind::TooDeep => write!(
                f,
                "expression nested deeper than {} levels",
                crate::parser::MAX_DEPTH
            ),
            ParseErrorKind::TooLong => write!(f, "input has too many tokens"),
            ParseErrorKind::NotAnAssignment => {
                write!(f, "expected a line of the form `Name = expression`")
            }
            ParseErrorKind::BadAttributeName(name) => write!(
                f,
                "attribute name {name:?} is not an identifier (letters, digits and '_', not starting with a digit)"
            ),
        }
    }
}

/// A parse failure, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// Where, as bytes of the parsed text.
    pub span: Span,
    /// Line and column, once the error knows the full source text.
    location: Option<Location>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    line: usize,
    column: usize,
    source_line: String,
    attribute: Option<String>,
}

impl ParseError {
    /// An error of `kind` at `span`.
    pub fn new(kind: ParseErrorKind, span: Span) -> ParseError {
        ParseError {
            kind,
            span,
            location: None,
        }
    }

    /// Attach line, column and the source line, computed from the whole input `src`.
    #[must_use]
    pub fn with_source(mut self, src: &str) -> ParseError {
        let (line, column) = line_col(src, self.span.start);
        let source_line = src.lines().nth(line - 1).unwrap_or("").to_owned();
        let attribute = self.location.and_then(|l| l.attribute);
        self.location = Some(Location {
            line,
            column,
            source_line,
            attribute,
        });
        self
    }

    /// Name the attribute whose value failed to parse.
    #[must_use]
    pub fn with_attribute(mut self, name: &str) -> ParseError {
        let mut loc = self.location.take().unwrap_or(Location {
            line: 0,
            column: 0,
            source_line: String::new(),
            attribute: None,
        });
        loc.attribute = Some(name.to_owned());
        self.location = Some(loc);
        self
    }

    /// 1-based line and column, when known.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        self.location
            .as_ref()
            .filter(|l| l.line > 0)
            .map(|l| (l.line, l.column))
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) if loc.line > 0 => {
                write!(f, "line {}, column {}: ", loc.line, loc.column)?;
                if let Some(attr) = &loc.attribute {
                    write!(f, "in attribute {attr}: ")?;
                }
                write!(f, "{}", self.kind)?;
                let caret_pad: String = loc
                    .source_line
                    .chars()
                    .take(loc.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n  | {}\n  | {caret_pad}^", loc.source_line)
            }
            Some(loc) => match &loc.attribute {
                Some(attr) => write!(f, "in attribute {attr}: {}", self.kind),
                None => write!(f, "{}", self.kind),
            },
            None => write!(f, "at byte {}: {}", self.span.start, self.kind),
        }
    }
}

impl std::error::Error for ParseError {}

/// A value or ad that a chosen text format cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrintError {
    /// Old syntax has no escape for a newline; the line-based protocol would break.
    #[error("attribute {attribute}: string value contains a newline, which the old (long) ClassAd format cannot carry; remove it or use the new format")]
    NewlineInOldString {
        /// The attribute holding the string.
        attribute: String,
    },
    /// The old format cannot carry this attribute name (it would need `'quotes'`).
    #[error("attribute name {attribute:?} needs quoting, which the old (long) ClassAd format does not allow; rename it to letters, digits and '_'")]
    NameNeedsQuoting {
        /// The offending name.
        attribute: String,
    },
    /// The printed line does not parse back to the same value in old syntax.
    #[error("attribute {attribute}: value does not survive the old (long) ClassAd format (a string ending in a backslash inside a larger expression?); printed as: {line}")]
    NotRoundTrip {
        /// The attribute.
        attribute: String,
        /// The line as printed.
        line: String,
    },
}
