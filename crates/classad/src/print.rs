//! Printers reproducing HTCondor's `ClassAdUnParser` (`src/classad/sink.cpp`): old ("long")
//! syntax as `printOld`/`sPrintAd` write it and new syntax as `ClassAdUnParser` writes it.

use std::fmt::Write as _;

use crate::ad::ClassAd;
use crate::ast::{for_each_child, BinaryOp, Expr, Literal, UnaryOp};
use crate::error::PrintError;
use crate::parser::is_identifier;
use crate::Syntax;

/// Print an expression in `syntax`.
pub fn expr_to_string(expr: &Expr, syntax: Syntax) -> String {
    let mut out = String::new();
    unparse(&mut out, expr, syntax);
    out
}

/// Print an ad in new syntax on one line: `[ a = 1; b = "x" ]`.
pub fn ad_to_new_string(ad: &ClassAd) -> String {
    let mut out = String::new();
    unparse_record(&mut out, ad, Syntax::New);
    out
}

/// Print an ad in old syntax, one `Name = value` line per attribute in insertion order.
///
/// # Errors
/// [`PrintError`] when a value or name cannot be carried by the old format.
pub fn ad_to_old_string(ad: &ClassAd) -> Result<String, PrintError> {
    let mut out = String::new();
    for (name, expr) in ad.iter() {
        out.push_str(&old_line(name, expr)?);
        out.push('\n');
    }
    Ok(out)
}

/// Print an ad as the JobRouter writes it to hooks and reads it back from them: old syntax,
/// one line per attribute, sorted byte-wise by name (`_sPrintAd` in `compat_classad.cpp`).
///
/// # Errors
/// [`PrintError`] when a value or name cannot be carried by the old format.
pub fn ad_to_hook_string(ad: &ClassAd) -> Result<String, PrintError> {
    let mut out = String::new();
    for (name, expr) in ad.sorted() {
        out.push_str(&old_line(name, expr)?);
        out.push('\n');
    }
    Ok(out)
}

/// One old-syntax line `Name = value` (without newline) that HTCondor's line parser
/// (`ClassAd::Insert`) reads back as the same attribute.
///
/// # Errors
/// [`PrintError`] for names needing quotes, strings with newlines or NULs, and strings ending
/// in a backslash anywhere but at the end of the line (old syntax would read `\"` as a quote).
pub fn old_line(name: &str, expr: &Expr) -> Result<String, PrintError> {
    if !is_identifier(name) {
        return Err(PrintError::NameNeedsQuoting {
            attribute: name.to_owned(),
        });
    }
    let mut trailing_backslashes = 0usize;
    let mut bad_char = false;
    visit_strings(expr, &mut |s| {
        if s.contains(['\n', '\0']) {
            bad_char = true;
        }
        if s.ends_with('\\') {
            trailing_backslashes += 1;
        }
    });
    if bad_char {
        return Err(PrintError::NewlineInOldString {
            attribute: name.to_owned(),
        });
    }
    let mut line = format!("{name} = ");
    unparse(&mut line, expr, Syntax::Old);
    // A string ending in '\' is only safe as the very last thing on the line.
    if trailing_backslashes > 1 || (trailing_backslashes == 1 && !line.ends_with("\\\"")) {
        return Err(PrintError::NotRoundTrip {
            attribute: name.to_owned(),
            line,
        });
    }
    Ok(line)
}

/// Call `f` on every string literal and quoted record name inside `expr`.
fn visit_strings(expr: &Expr, f: &mut dyn FnMut(&str)) {
    match expr {
        Expr::Literal(Literal::String(s)) => f(s),
        Expr::Record(ad) => {
            for (n, _) in ad.iter() {
                f(n);
            }
        }
        _ => {}
    }
    for_each_child(expr, |c| visit_strings(c, f));
}

fn unparse(out: &mut String, expr: &Expr, syntax: Syntax) {
    match expr {
        Expr::Literal(lit) => unparse_literal(out, lit, syntax),
        Expr::Attr {
            base,
            name,
            absolute,
        } => match base {
            Some(b) => {
                unparse(out, b, syntax);
                // `0.x` would lex as a malformed real; `0 .x` selects from the integer.
                if matches!(b.as_ref(), Expr::Literal(Literal::Integer(_))) {
                    out.push(' ');
                }
                out.push('.');
                unparse_identifier(out, name, syntax);
            }
            None => {
                if *absolute {
                    out.push('.');
                }
                unparse_identifier(out, name, syntax);
            }
        },
        Expr::Unary(op, x) => {
            out.push_str(match op {
                UnaryOp::Plus => " +",
                UnaryOp::Minus => " -",
                UnaryOp::Not => " !",
                UnaryOp::BitNot => " ~",
            });
            // ` -5` would read back as the literal -5; ` - 5` keeps the operator, so printing
            // is stable (HTCondor writes ` -5` here).
            if *op == UnaryOp::Minus && starts_with_digit(x) {
                out.push(' ');
            }
            unparse(out, x, syntax);
        }
        Expr::Binary(op, a, b) => {
            unparse(out, a, syntax);
            out.push_str(binary_text(*op, syntax));
            unparse(out, b, syntax);
        }
        Expr::Ternary(c, m, o) => {
            unparse(out, c, syntax);
            match m {
                Some(m) => {
                    out.push_str(" ? ");
                    unparse(out, m, syntax);
                    out.push_str(" : ");
                }
                None => out.push_str(" ?: "),
            }
            unparse(out, o, syntax);
        }
        Expr::Subscript(a, i) => {
            unparse(out, a, syntax);
            out.push('[');
            unparse(out, i, syntax);
            out.push(']');
        }
        Expr::Paren(x) => {
            out.push('(');
            unparse(out, x, syntax);
            out.push(')');
        }
        Expr::Call(name, args) => {
            unparse_identifier(out, name, syntax);
            out.push('(');
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                unparse(out, a, syntax);
            }
            out.push(')');
        }
        Expr::List(items) => {
            out.push_str("{ ");
            for (i, a) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                unparse(out, a, syntax);
            }
            out.push_str(" }");
        }
        Expr::Record(ad) => unparse_record(out, ad, syntax),
    }
}

fn binary_text(op: BinaryOp, syntax: Syntax) -> &'static str {
    match syntax {
        Syntax::Old => op.old_text(),
        Syntax::New => op.new_text(),
    }
}

fn unparse_record(out: &mut String, ad: &ClassAd, syntax: Syntax) {
    out.push_str("[ ");
    for (i, (name, expr)) in ad.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        unparse_identifier(out, name, syntax);
        out.push_str(" = ");
        unparse(out, expr, syntax);
    }
    out.push_str(" ]");
}

/// A name, in `'quotes'` when it is not a plain identifier or is a keyword. (HTCondor's
/// `identifierNeedsQuoting` ignores keywords and writes `'false'` as `false`, which reads back
/// as the boolean; quoting them is the fix, found by fuzzing.)
fn unparse_identifier(out: &mut String, name: &str, syntax: Syntax) {
    let mut escaped = String::new();
    escape_into(&mut escaped, name, b'\'', syntax);
    if is_identifier(&escaped) && !is_keyword(&escaped) {
        out.push_str(&escaped);
    } else {
        out.push('\'');
        out.push_str(&escaped);
        out.push('\'');
    }
}

/// True when `x` prints starting with a digit or `.digit`: a non-negative number.
fn starts_with_digit(x: &Expr) -> bool {
    match x {
        Expr::Literal(Literal::Integer(i)) => *i >= 0,
        Expr::Literal(Literal::Real(r)) => r.is_finite() && r.is_sign_positive(),
        _ => false,
    }
}

/// Words the lexer reads as literals or operators, in any case.
fn is_keyword(name: &str) -> bool {
    ["true", "false", "undefined", "error", "is", "isnt"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(name))
}

/// String body escaping: the delimiter always; in new syntax also control characters and
/// backslashes, and every non-printable or non-ASCII byte as `\ooo`.
fn escape_into(out: &mut String, s: &str, delim: u8, syntax: Syntax) {
    for ch in s.chars() {
        if ch.is_ascii() && ch as u32 == u32::from(delim) {
            out.push('\\');
            out.push(ch);
            continue;
        }
        if syntax == Syntax::Old {
            out.push(ch);
            continue;
        }
        match ch {
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut buf = [0u8; 4];
                for b in ch.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:03o}");
                }
            }
        }
    }
}

fn unparse_literal(out: &mut String, lit: &Literal, syntax: Syntax) {
    match lit {
        Literal::Undefined => out.push_str("undefined"),
        Literal::Error => out.push_str("error"),
        Literal::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Literal::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Literal::Real(r) => out.push_str(&format_real(*r, syntax)),
        Literal::String(s) => {
            out.push('"');
            escape_into(out, s, b'"', syntax);
            out.push('"');
        }
    }
}

/// A real as HTCondor prints it: `%.16G` (plus `.0` when it looks like an integer) in old
/// syntax, `%1.15E` in new, `0.0`/`-0.0` for zeros and `real("NaN")`-style for the rest.
pub fn format_real(r: f64, syntax: Syntax) -> String {
    if r == 0.0 {
        return if r.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    if r.is_nan() {
        return "real(\"NaN\")".to_owned();
    }
    if r.is_infinite() {
        return if r < 0.0 {
            "real(\"-INF\")"
        } else {
            "real(\"INF\")"
        }
        .to_owned();
    }
    match syntax {
        Syntax::Old => {
            let mut s = format_g(r, 16);
            if !s.contains(['.', 'E', 'e']) {
                s.push_str(".0");
            }
            s
        }
        Syntax::New => c_exp(r, 15),
    }
}

/// C's `%.<prec>E`: mantissa with `prec` decimals, `E`, sign and at least two exponent digits.
fn c_exp(r: f64, prec: usize) -> String {
    let s = format!("{r:.prec$e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}E{sign}{:02}", exp.unsigned_abs())
}

/// C's `%.<prec>G`.
fn format_g(r: f64, prec: usize) -> String {
    let prec = prec.max(1);
    // The exponent after rounding to `prec` significant digits decides the style.
    let sci = format!("{r:.p$e}", p = prec - 1);
    let exp: i64 = sci
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let p = i64::try_from(prec).unwrap_or(16);
    if exp < -4 || exp >= p {
        let e = c_exp(r, prec - 1);
        let (mantissa, rest) = e.split_once('E').unwrap_or((&e, ""));
        format!("{}E{rest}", strip_zeros(mantissa))
    } else {
        let decimals = usize::try_from(p - 1 - exp).unwrap_or(0);
        strip_zeros(&format!("{r:.decimals$}")).to_owned()
    }
}

/// Drop trailing zeros after a decimal point, and the point itself if nothing follows.
fn strip_zeros(s: &str) -> &str {
    if !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reals_match_printf() {
        let old = |r| format_real(r, Syntax::Old);
        assert_eq!(old(1.0), "1.0");
        assert_eq!(old(0.1), "0.1");
        assert_eq!(old(1e15), "1000000000000000.0");
        assert_eq!(old(1e16), "1E+16");
        assert_eq!(old(1e-5), "1E-05");
        assert_eq!(old(1e-4), "0.0001");
        assert_eq!(old(123456789012345678.0), "1.234567890123457E+17");
        assert_eq!(old(-0.0), "-0.0");
        assert_eq!(old(f64::NAN), "real(\"NaN\")");
        assert_eq!(format_real(1.5, Syntax::New), "1.500000000000000E+00");
        assert_eq!(format_real(1e-300, Syntax::New), "1.000000000000000E-300");
    }

    fn reprint(src: &str) -> String {
        let e = crate::parse_expr(src, Syntax::New).unwrap();
        let printed = expr_to_string(&e, Syntax::New);
        let again = crate::parse_expr(&printed, Syntax::New).unwrap();
        assert_eq!(again, e, "{src} printed as {printed}");
        printed
    }

    /// Fuzzing finds: texts whose HTCondor-style printing would not read back.
    #[test]
    fn printing_reads_back_where_htcondor_would_not() {
        assert_eq!(reprint(".'false'"), ".'false'");
        assert_eq!(reprint("0\n.bb"), "0 .bb");
        assert_eq!(reprint("'a b'(1)"), "'a b'(1)");
        assert_eq!(reprint("- 0"), " - 0");
        assert_eq!(reprint("-0"), "0");
        assert!(crate::parse_expr("\"a\0b\"", Syntax::New).is_err());
    }
}
