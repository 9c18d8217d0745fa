//! Text from untrusted sources (the guest, archive names, ads) made safe to show people: in
//! ClassAd attributes, logs and messages.
//!
//! Stripping control characters is not enough: U+2028/U+2029 end a line for some readers of
//! the hook's line-based output, bidi overrides (U+202E) reorder what an admin reads, and
//! zero-width characters hide text. So the rule is an allow-list: printable ASCII, letters and
//! digits of any script, Latin-1 punctuation and the common typographic punctuation.

/// Whether `c` can be shown as it is (see the module docs).
pub fn is_safe_char(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    matches!(c,
        '\u{a1}'..='\u{ff}'          // Latin-1 punctuation and letters (no NBSP, no C1)
        | '\u{2010}'..='\u{2027}'    // dashes, quotes, bullets, ellipsis
        | '\u{2030}'..='\u{205e}'    // per mille, primes, more punctuation
        | '\u{fffd}')
        || (c.is_alphanumeric() && !is_format_like(c))
}

/// Characters some scripts count as letters that still change how text is shown.
fn is_format_like(c: char) -> bool {
    matches!(c, '\u{e000}'..='\u{f8ff}' | '\u{f0000}'..='\u{10ffff}' | '\u{e0000}'..='\u{e007f}')
}

/// `text` with every unsafe character replaced by `?`, cut to `max_chars` (with `...`).
pub fn safe_text(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max_chars)
        .map(|c| if is_safe_char(c) { c } else { '?' })
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_characters_are_replaced() {
        assert_eq!(
            safe_text("ok\u{2028}no\u{202e}rev\u{200b}z\n\t\u{85}é中", 100),
            "ok?no?rev?z???é中"
        );
        assert_eq!(safe_text("abcdef", 3), "abc...");
        assert_eq!(safe_text("\u{e000}\u{feff}", 10), "??");
    }
}
