//! Job arguments and environment as HTCondor stores them in the ad
//! (HTCondor's `condor_arglist.cpp` and `env.cpp`).

use thiserror::Error;

/// Arguments or environment text that HTCondor would refuse too.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// A `'` group is not closed.
    #[error("unbalanced single quote in {attribute}: {text:?} (close the quoted part, or double a literal ' as '')")]
    UnbalancedQuote {
        /// `Arguments` or `Environment`.
        attribute: &'static str,
        /// The whole value.
        text: String,
    },
    /// Double-quoted (V2) arguments whose closing `"` is missing or followed by more text.
    #[error("unbalanced double quote in {attribute}: {text:?} (V2 arguments go inside one pair of double quotes; a literal \" is written \"\")")]
    UnbalancedDoubleQuote {
        /// The knob.
        attribute: &'static str,
        /// The whole value.
        text: String,
    },
    /// An environment entry without `=`.
    #[error("environment entry {entry:?} in {attribute} has no '=' (entries are NAME=value)")]
    MissingEquals {
        /// `Environment` or `Env`.
        attribute: &'static str,
        /// The entry.
        entry: String,
    },
}

/// Split a V2 ("new syntax") argument string: whitespace separates, `'...'` groups text
/// (also in the middle of a word), `''` inside quotes is a literal `'` (`split_args`).
///
/// # Errors
/// [`ArgsError::UnbalancedQuote`] when a quote is left open.
pub fn split_v2(text: &str, attribute: &'static str) -> Result<Vec<String>, ArgsError> {
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| is_arg_space(*c)) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(args);
        }
        let mut arg = String::new();
        while let Some(&c) = chars.peek() {
            if is_arg_space(c) {
                break;
            }
            chars.next();
            if c != '\'' {
                arg.push(c);
                continue;
            }
            // Quoted section: until a single ', with '' standing for a literal '.
            loop {
                match chars.next() {
                    None => {
                        return Err(ArgsError::UnbalancedQuote {
                            attribute,
                            text: text.to_owned(),
                        })
                    }
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        arg.push('\'');
                    }
                    Some('\'') => break,
                    Some(q) => arg.push(q),
                }
            }
        }
        args.push(arg);
    }
}

/// Split V1 (`Args`) arguments: whitespace only, no quoting (`AppendArgsV1Raw_unix`).
pub fn split_v1(text: &str) -> Vec<String> {
    text.split(is_arg_space)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Split arguments as HTCondor's `ArgList::AppendArgsV1RawOrV2Quoted` does for knobs such as
/// `STARTD_CRON_<NAME>_ARGS` and `LIBVIRT_XML_SCRIPT_ARGS`: V2 when the text is in double
/// quotes (`""` inside standing for `"`), else V1.
///
/// # Errors
/// [`ArgsError::UnbalancedDoubleQuote`] for an unclosed `"` or text after the closing one,
/// [`ArgsError::UnbalancedQuote`] for an unclosed `'` inside.
pub fn split_v1_raw_or_v2_quoted(
    text: &str,
    attribute: &'static str,
) -> Result<Vec<String>, ArgsError> {
    match v2_quoted(text, attribute)? {
        Some(inner) => split_v2(&inner, attribute),
        None => Ok(split_v1(text)),
    }
}

/// Parse an environment as HTCondor's `Env::MergeFromV1RawOrV2Quoted` does for knobs such
/// as `STARTD_CRON_<NAME>_ENV`: V2 when in double quotes, else V1 (`;`-separated).
///
/// # Errors
/// [`ArgsError`] for unbalanced quotes or entries without `=`.
pub fn parse_env_v1_raw_or_v2_quoted(
    text: &str,
    attribute: &'static str,
) -> Result<Vec<(String, String)>, ArgsError> {
    match v2_quoted(text, attribute)? {
        Some(inner) => parse_env_v2(&inner),
        None => parse_env_v1(text, None),
    }
}

/// The V2 text inside double quotes (`""` standing for `"`), or `None` when `text` does not
/// start with `"` (then it is V1).
fn v2_quoted(text: &str, attribute: &'static str) -> Result<Option<String>, ArgsError> {
    let Some(rest) = text.trim_start().strip_prefix('"') else {
        return Ok(None);
    };
    let unbalanced = || ArgsError::UnbalancedDoubleQuote {
        attribute,
        text: text.to_owned(),
    };
    let mut inner = String::new();
    let mut chars = rest.chars().peekable();
    loop {
        match chars.next() {
            None => return Err(unbalanced()),
            Some('"') if chars.peek() == Some(&'"') => {
                chars.next();
                inner.push('"');
            }
            Some('"') => break,
            Some(c) => inner.push(c),
        }
    }
    if chars.any(|c| !is_arg_space(c)) {
        return Err(unbalanced());
    }
    Ok(Some(inner))
}

fn is_arg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Join arguments into V2 text, HTCondor's canonical writer (`join_args`): an empty argument
/// is `''`, whitespace and `'` are quoted (`'` doubled).
pub fn join_v2<S: AsRef<str>>(args: &[S]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let arg = arg.as_ref();
        if arg.is_empty() {
            out.push_str("''");
            continue;
        }
        let mut quoted = false;
        for c in arg.chars() {
            let special = is_arg_space(c) || c == '\'';
            if special != quoted {
                out.push('\'');
                quoted = special;
            }
            if c == '\'' {
                out.push_str("''");
            } else {
                out.push(c);
            }
        }
        if quoted {
            out.push('\'');
        }
    }
    out
}

/// Parse a V2 `Environment` string into `(name, value)` pairs, later duplicates winning
/// as in HTCondor's table.
///
/// # Errors
/// [`ArgsError`] for unbalanced quotes or entries without `=`.
pub fn parse_env_v2(text: &str) -> Result<Vec<(String, String)>, ArgsError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in split_v2(text, "Environment")? {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(ArgsError::MissingEquals {
                attribute: "Environment",
                entry,
            });
        };
        insert_env(&mut out, name, value);
    }
    Ok(out)
}

/// Parse a V1 `Env` string: entries split on `delim` (from `EnvDelim`, default `;`) or on a
/// permitted delimiter given as the first character, and on newlines (`MergeFromV1AutoDelim`).
///
/// # Errors
/// [`ArgsError::MissingEquals`] for an entry without `=`.
pub fn parse_env_v1(text: &str, delim: Option<char>) -> Result<Vec<(String, String)>, ArgsError> {
    const PERMITTED: &str = "!#$%&*+,-/:;<>?@^`|~\u{1f}";
    let (delim, body) = match text.chars().next() {
        Some(first) if PERMITTED.contains(first) => (first, &text[first.len_utf8()..]),
        _ => (delim.unwrap_or(';'), text),
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in body.split([delim, '\n']) {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = entry.split_once('=') else {
            return Err(ArgsError::MissingEquals {
                attribute: "Env",
                entry: entry.to_owned(),
            });
        };
        insert_env(&mut out, name, value);
    }
    Ok(out)
}

fn insert_env(out: &mut Vec<(String, String)>, name: &str, value: &str) {
    if let Some(slot) = out.iter_mut().find(|(n, _)| n == name) {
        slot.1 = value.to_owned();
    } else {
        out.push((name.to_owned(), value.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn knob_arguments_are_v1_unless_double_quoted() {
        let f = |t| split_v1_raw_or_v2_quoted(t, "ARGS");
        assert_eq!(f("probe").unwrap(), ["probe"]);
        assert_eq!(
            f("  libvirt-xml --domain-type qemu ").unwrap(),
            ["libvirt-xml", "--domain-type", "qemu"]
        );
        assert_eq!(f("it's").unwrap(), ["it's"]);
        assert_eq!(
            f("\"probe 'two words' \"\"q\"\"\"").unwrap(),
            ["probe", "two words", "\"q\""]
        );
        assert_eq!(f("\"\"").unwrap(), Vec::<String>::new());
        assert!(matches!(
            f("\"probe"),
            Err(ArgsError::UnbalancedDoubleQuote { .. })
        ));
        assert!(matches!(
            f("\"probe\" x"),
            Err(ArgsError::UnbalancedDoubleQuote { .. })
        ));
        assert!(matches!(
            f("\"'open\""),
            Err(ArgsError::UnbalancedQuote { .. })
        ));
        let e = |t| parse_env_v1_raw_or_v2_quoted(t, "ENV").unwrap();
        assert_eq!(
            e("A=1;B=x y"),
            [("A".into(), "1".into()), ("B".into(), "x y".into())]
        );
        assert_eq!(
            e("\"A=1 B='x y'\""),
            [("A".into(), "1".into()), ("B".into(), "x y".into())]
        );
    }

    #[test]
    fn v2_as_the_htcondor_manual_shows() {
        // Submit: arguments = "one ""two"" 'spacey ''quoted'' argument'" (fixture 02).
        let ad_value = "one \"two\" spacey' '''quoted''' 'argument";
        assert_eq!(
            split_v2(ad_value, "Arguments").unwrap(),
            vec!["one", "\"two\"", "spacey 'quoted' argument"]
        );
        // Fixture 25: arguments = "'' 'a<TAB>b' ''''".
        assert_eq!(
            split_v2("'' a'\t'b ''''", "Arguments").unwrap(),
            vec!["", "a\tb", "'"]
        );
        assert!(split_v2("a 'b", "Arguments").is_err());
    }

    #[test]
    fn join_is_the_inverse_of_split() {
        let args = vec![
            "one",
            "\"two\"",
            "spacey 'quoted' argument",
            "",
            "a\tb",
            "'",
        ];
        let text = join_v2(&args);
        assert_eq!(
            text,
            "one \"two\" spacey' '''quoted''' 'argument '' a'\t'b ''''"
        );
        assert_eq!(split_v2(&text, "Arguments").unwrap(), args);
    }

    #[test]
    fn v1_splits_on_whitespace_only() {
        assert_eq!(split_v1("a b\"c  d"), vec!["a", "b\"c", "d"]);
    }

    #[test]
    fn environments() {
        let env = parse_env_v2("eq=a=b one=1 three=spacey' '''quoted''' 'value two=\"2\"").unwrap();
        assert_eq!(env[0], ("eq".into(), "a=b".into()));
        assert_eq!(env[2], ("three".into(), "spacey 'quoted' value".into()));
        assert!(parse_env_v2("NOEQUALS").is_err());
        let v1 = parse_env_v1("A=1;B=two words;C=x=y", None).unwrap();
        assert_eq!(v1[1], ("B".into(), "two words".into()));
        let auto = parse_env_v1("|A=1|B=2;3", None).unwrap();
        assert_eq!(auto[1], ("B".into(), "2;3".into()));
    }
}
