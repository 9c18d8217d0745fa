//! HTCondor ClassAds: lexer, parser, printers and evaluator for old ("long") and new syntax,
//! and the JobRouter hook stream framing.
//!
//! The phases are separate modules, as in toml-rs: `lexer` (text to unvalidated
//! tokens with spans), [`parser`] (tokens to an [`Expr`] tree or a [`ClassAd`], with a depth
//! limit), [`print`](mod@print) (trees back to HTCondor's canonical text), [`eval`] (values in the scope
//! of one ad) and [`stream`] (stdin of a hook split into ads). HTCondor's own library
//! (`htcondor==24.0` Python bindings) is the oracle the tests compare against.
//!
//! ```
//! use classad::{parse_old_ad, print::ad_to_hook_string, eval::evaluate_attr, Value};
//!
//! let ad = parse_old_ad("ImageSize = 2500\nRequestMemory = ifthenelse(MemoryUsage =!= undefined,MemoryUsage,(ImageSize + 1023) / 1024)\n").unwrap();
//! assert_eq!(evaluate_attr(&ad, "RequestMemory"), Value::Integer(3));
//! assert_eq!(
//!     ad_to_hook_string(&ad).unwrap(),
//!     "ImageSize = 2500\nRequestMemory = ifthenelse(MemoryUsage =!= undefined,MemoryUsage,(ImageSize + 1023) / 1024)\n"
//! );
//! ```
//!
//! # Where we differ from HTCondor on purpose
//!
//! - Printing always reads back: names that are keywords (`'true'`), function names that
//!   need quotes and the selection `0 .x` are quoted or spaced so they parse to the same tree;
//!   a unary minus before a number prints as ` - 5` (HTCondor writes ` -5`, which reads back
//!   as the literal -5). HTCondor's own output for these cases does not parse back.
//! - Strings are UTF-8: escapes that produce invalid UTF-8 (`"\377"`) are a parse error.
//! - Lists are evaluated eagerly, so converting a list to text (`string({ a })`) prints its
//!   values (`"{ 7 }"`), where HTCondor prints its unevaluated items (`"{ a }"`).
//! - `absTime`/`relTime` literals and the `K`/`M`/`G` number suffixes are not supported
//!   (HTCondor 24's Python bindings reject the suffixes too); nesting is limited to
//!   [`parser::MAX_DEPTH`] levels and operator chains to [`parser::MAX_TREE_DEPTH`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ad;
pub mod ast;
pub mod error;
pub mod eval;
mod lexer;
pub mod parser;
pub mod print;
pub mod span;
pub mod stream;
pub mod value;

pub use ad::ClassAd;
pub use ast::{BinaryOp, Expr, Literal, UnaryOp};
pub use error::{ParseError, ParseErrorKind, PrintError};
pub use parser::{parse_expr, parse_new_ad, parse_new_ads, parse_old_ad, parse_old_line};
pub use value::Value;

/// Which ClassAd text syntax to read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Old/long syntax: `Name = expr` lines; only `\"` is an escape in strings.
    Old,
    /// New syntax: `[ a = 1; b = "x" ]`, full escapes.
    New,
}

/// Parse ads in either syntax: new syntax when the first non-blank character is `[`,
/// otherwise old-syntax ads separated by blank lines (as `condor_q -long` prints them).
///
/// # Errors
/// A [`ParseError`] with line and column.
pub fn parse_ads(src: &str) -> Result<Vec<ClassAd>, ParseError> {
    if src.trim_start().starts_with('[') {
        parse_new_ads(src)
    } else {
        parser::parse_old_ads(src)
    }
}
