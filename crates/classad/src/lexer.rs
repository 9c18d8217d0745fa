//! Lexer: text to unvalidated tokens with spans.
//!
//! Follows HTCondor's `src/classad/lexer.cpp`: numbers are always decimal (HTCondor runs with
//! old-ClassAd semantics, so `010` is ten and `0x1F` lexes as the integer 0), a `-` directly
//! before a digit is part of the number unless the previous token ends an operand, strings use
//! new-syntax escapes or, in old syntax, only `\"`, and adjacent string literals concatenate.

use crate::error::{ParseError, ParseErrorKind};
use crate::span::Span;
use crate::Syntax;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    Integer(i64),
    Real(f64),
    Str(String),
    Bool(bool),
    Undefined,
    Error,
    /// A plain or `'quoted'` identifier.
    Ident {
        name: String,
        quoted: bool,
    },
    Punct(Punct),
    End,
}

/// Operators and punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Punct {
    Dot,
    Star,
    Slash,
    Percent,
    Plus,
    Minus,
    Tilde,
    Caret,
    Question,
    Colon,
    Semicolon,
    Comma,
    OpenBox,
    CloseBox,
    OpenParen,
    CloseParen,
    OpenBrace,
    CloseBrace,
    Amp,
    AmpAmp,
    Pipe,
    PipePipe,
    Less,
    LessEq,
    Shl,
    Greater,
    GreaterEq,
    Shr,
    UShr,
    Assign,
    EqEq,
    MetaEq,
    MetaNe,
    Bang,
    NotEq,
}

/// One lexed token (unvalidated: the parser decides whether it fits).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

/// Most tokens a single input may produce; bounds memory on hostile input.
pub(crate) const MAX_TOKENS: usize = 1 << 20;

/// Tokenize `src` completely.
pub(crate) fn tokenize(src: &str, syntax: Syntax) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
        syntax,
        prev_ends_operand: false,
    };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let end = token.kind == TokenKind::End;
        lexer.prev_ends_operand = ends_operand(&token.kind);
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
        if tokens.len() > MAX_TOKENS {
            return Err(ParseError::new(
                ParseErrorKind::TooLong,
                Span::new(lexer.pos, lexer.pos),
            ));
        }
    }
}

/// After these tokens a `-` is the binary operator, never the sign of a number.
fn ends_operand(kind: &TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::Integer(_)
            | TokenKind::Real(_)
            | TokenKind::Str(_)
            | TokenKind::Bool(_)
            | TokenKind::Undefined
            | TokenKind::Error
            | TokenKind::Ident { .. }
            | TokenKind::Punct(
                Punct::Dot | Punct::CloseBox | Punct::CloseParen | Punct::CloseBrace
            )
    )
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    syntax: Syntax,
    prev_ends_operand: bool,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn err(&self, kind: ParseErrorKind, start: usize) -> ParseError {
        ParseError::new(kind, Span::new(start, self.pos.max(start + 1)))
    }

    fn skip_space_and_comments(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_whitespace() || c == 0x0b => self.pos += 1,
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    let start = self.pos;
                    self.pos += 2;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(self.err(ParseErrorKind::UnterminatedComment, start))
                            }
                            Some(b'*') if self.peek_at(1) == Some(b'/') => {
                                self.pos += 2;
                                break;
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_space_and_comments()?;
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Ok(Token {
                kind: TokenKind::End,
                span: Span::new(start, start),
            });
        };
        let kind = match c {
            b'-' if !self.prev_ends_operand => self.number_or_minus()?,
            b'0'..=b'9' => self.number()?,
            b'.' => {
                if self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) {
                    self.number()?
                } else {
                    self.pos += 1;
                    TokenKind::Punct(Punct::Dot)
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => self.word(),
            b'"' => TokenKind::Str(self.string(b'"')?),
            b'\'' => TokenKind::Ident {
                name: self.string(b'\'')?,
                quoted: true,
            },
            _ => TokenKind::Punct(self.punct()?),
        };
        Ok(Token {
            kind,
            span: Span::new(start, self.pos),
        })
    }

    /// A `-` where an operand may start: a negative number when a digit (or `.digit`) follows.
    fn number_or_minus(&mut self) -> Result<TokenKind, ParseError> {
        let next = self.peek_at(1);
        let next2 = self.peek_at(2);
        let is_number = match next {
            Some(d) if d.is_ascii_digit() => true,
            Some(b'.') => next2.is_some_and(|d| d.is_ascii_digit()),
            _ => false,
        };
        if is_number {
            self.number()
        } else {
            self.pos += 1;
            Ok(TokenKind::Punct(Punct::Minus))
        }
    }

    /// Integers and reals, as `Lexer::tokenizeNumber` accepts them.
    fn number(&mut self) -> Result<TokenKind, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits_start = self.pos;
        let mut is_real = false;
        if self.peek() == Some(b'0') && matches!(self.peek_at(1), Some(b'x' | b'X')) {
            // Hex digits are accepted by the lexer but converted base 10, giving 0.
            self.pos += 2;
            if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                return Err(self.err(ParseErrorKind::BadNumber, start));
            }
            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                self.pos += 1;
            }
            return Ok(TokenKind::Integer(0));
        }
        let leading_zero = self.peek() == Some(b'0');
        let mut non_octal = false;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if leading_zero && c > b'7' {
                non_octal = true;
            }
            self.pos += 1;
        }
        let int_end = self.pos;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                // `5.` is a lexer error in HTCondor (a digit must follow the point).
                return Err(self.err(ParseErrorKind::BadNumber, start));
            }
            is_real = true;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) && (is_real || int_end > digits_start) {
            is_real = true;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.err(ParseErrorKind::BadNumber, start));
            }
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        let text = self.src.get(start..self.pos).unwrap_or("");
        if is_real {
            // Rust's parser agrees with strtod on this grammar; overflow gives infinity.
            let value: f64 = text
                .parse()
                .map_err(|_| self.err(ParseErrorKind::BadNumber, start))?;
            return Ok(TokenKind::Real(value));
        }
        if non_octal {
            // `089`: looks octal but is not, and is not a real either.
            return Err(self.err(ParseErrorKind::BadNumber, start));
        }
        // HTCondor converts with `from_chars`-like rules: out of range gives 0.
        Ok(TokenKind::Integer(text.parse().unwrap_or(0)))
    }

    /// Identifiers and the keywords `true false undefined error is isnt` (any case).
    fn word(&mut self) -> TokenKind {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.pos += 1;
        }
        let text = self.src.get(start..self.pos).unwrap_or("");
        let only_alpha = text.bytes().all(|c| c.is_ascii_alphabetic());
        if only_alpha {
            match text.to_ascii_lowercase().as_str() {
                "true" => return TokenKind::Bool(true),
                "false" => return TokenKind::Bool(false),
                "undefined" => return TokenKind::Undefined,
                "error" => return TokenKind::Error,
                "is" => return TokenKind::Punct(Punct::MetaEq),
                "isnt" => return TokenKind::Punct(Punct::MetaNe),
                _ => {}
            }
        }
        TokenKind::Ident {
            name: text.to_owned(),
            quoted: false,
        }
    }

    /// A string literal (`"`) or quoted identifier (`'`), including adjacent concatenation.
    fn string(&mut self, delim: u8) -> Result<String, ParseError> {
        match self.syntax {
            Syntax::Old => self.string_old(delim),
            Syntax::New => self.string_new(delim),
        }
    }

    fn string_new(&mut self, delim: u8) -> Result<String, ParseError> {
        let start = self.pos;
        let mut raw: Vec<u8> = Vec::new();
        loop {
            // self.pos is at an opening delimiter.
            self.pos += 1;
            let mut odd_backslashes = false;
            loop {
                let Some(c) = self.peek() else {
                    return Err(self.err(ParseErrorKind::UnterminatedString, start));
                };
                if c == delim && !odd_backslashes {
                    break;
                }
                odd_backslashes = c == b'\\' && !odd_backslashes;
                raw.push(c);
                self.pos += 1;
            }
            self.pos += 1; // closing delimiter
                           // Adjacent literals with the same delimiter concatenate.
            let mut look = self.pos;
            while self
                .bytes
                .get(look)
                .is_some_and(|c| c.is_ascii_whitespace() || *c == 0x0b)
            {
                look += 1;
            }
            if self.bytes.get(look) == Some(&delim) {
                self.pos = look;
                continue;
            }
            break;
        }
        let bytes =
            convert_escapes(&raw).ok_or_else(|| self.err(ParseErrorKind::NulInString, start))?;
        String::from_utf8(bytes).map_err(|_| self.err(ParseErrorKind::InvalidUtf8, start))
    }

    /// Old syntax: a backslash is literal except `\"` followed by more text on the line.
    fn string_old(&mut self, delim: u8) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(ParseErrorKind::UnterminatedString, start));
            };
            if c == 0 {
                return Err(self.err(ParseErrorKind::NulInString, start));
            }
            if c != delim {
                out.push(c);
                self.pos += 1;
                continue;
            }
            if out.last() == Some(&b'\\') {
                // `\"`: a literal quote if anything but a newline or the end follows.
                match self.peek_at(1) {
                    Some(next) if next != b'\n' => {
                        out.pop();
                        out.push(delim);
                        self.pos += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            self.pos += 1;
            break;
        }
        String::from_utf8(out).map_err(|_| self.err(ParseErrorKind::InvalidUtf8, start))
    }

    fn punct(&mut self) -> Result<Punct, ParseError> {
        let start = self.pos;
        let c = self.peek().unwrap_or(0);
        let n1 = self.peek_at(1);
        let n2 = self.peek_at(2);
        let (punct, len) = match c {
            b'.' => (Punct::Dot, 1),
            b'*' => (Punct::Star, 1),
            b'/' => (Punct::Slash, 1),
            b'%' => (Punct::Percent, 1),
            b'+' => (Punct::Plus, 1),
            b'-' => (Punct::Minus, 1),
            b'~' => (Punct::Tilde, 1),
            b'^' => (Punct::Caret, 1),
            b'?' => (Punct::Question, 1),
            b':' => (Punct::Colon, 1),
            b';' => (Punct::Semicolon, 1),
            b',' => (Punct::Comma, 1),
            b'[' => (Punct::OpenBox, 1),
            b']' => (Punct::CloseBox, 1),
            b'(' => (Punct::OpenParen, 1),
            b')' => (Punct::CloseParen, 1),
            b'{' => (Punct::OpenBrace, 1),
            b'}' => (Punct::CloseBrace, 1),
            b'&' if n1 == Some(b'&') => (Punct::AmpAmp, 2),
            b'&' => (Punct::Amp, 1),
            b'|' if n1 == Some(b'|') => (Punct::PipePipe, 2),
            b'|' => (Punct::Pipe, 1),
            b'<' if n1 == Some(b'=') => (Punct::LessEq, 2),
            b'<' if n1 == Some(b'<') => (Punct::Shl, 2),
            b'<' => (Punct::Less, 1),
            b'>' if n1 == Some(b'=') => (Punct::GreaterEq, 2),
            b'>' if n1 == Some(b'>') && n2 == Some(b'>') => (Punct::UShr, 3),
            b'>' if n1 == Some(b'>') => (Punct::Shr, 2),
            b'>' => (Punct::Greater, 1),
            b'=' if n1 == Some(b'=') => (Punct::EqEq, 2),
            b'=' if n1 == Some(b'?') && n2 == Some(b'=') => (Punct::MetaEq, 3),
            b'=' if n1 == Some(b'?') => {
                self.pos += 2;
                return Err(self.err(ParseErrorKind::UnexpectedChar('?'), start));
            }
            b'=' if n1 == Some(b'!') && n2 == Some(b'=') => (Punct::MetaNe, 3),
            b'=' => (Punct::Assign, 1),
            b'!' if n1 == Some(b'=') => (Punct::NotEq, 2),
            b'!' => (Punct::Bang, 1),
            _ => {
                let ch = self
                    .src
                    .get(start..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('?');
                self.pos += ch.len_utf8();
                return Err(self.err(ParseErrorKind::UnexpectedChar(ch), start));
            }
        };
        self.pos += len;
        Ok(punct)
    }
}

/// New-syntax escapes (`convert_escapes` in HTCondor's util.cpp): `\n` etc., up to three octal
/// digits (`\400` is `\40` then `0`), and any other escaped character stands for itself.
/// Returns `None` when the result would contain a NUL byte.
fn convert_escapes(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        i += 1;
        if c == 0 {
            return None;
        }
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = raw.get(i) else {
            // A trailing lone backslash stays.
            out.push(b'\\');
            break;
        };
        i += 1;
        let byte = match e {
            b'a' => 0x07,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b'0'..=b'7' => {
                let max_digits = if e <= b'3' { 3 } else { 2 };
                let mut value = u32::from(e - b'0');
                let mut digits = 1;
                while digits < max_digits {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                            digits += 1;
                        }
                        _ => break,
                    }
                }
                u8::try_from(value).ok()?
            }
            other => other,
        };
        if byte == 0 {
            return None;
        }
        out.push(byte);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        tokenize(src, Syntax::New)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn minus_binds_to_number_only_where_an_operand_starts() {
        assert_eq!(
            kinds("2 - -3"),
            vec![
                TokenKind::Integer(2),
                TokenKind::Punct(Punct::Minus),
                TokenKind::Integer(-3),
                TokenKind::End
            ]
        );
        assert_eq!(
            kinds("a-1"),
            vec![
                TokenKind::Ident {
                    name: "a".into(),
                    quoted: false
                },
                TokenKind::Punct(Punct::Minus),
                TokenKind::Integer(1),
                TokenKind::End
            ]
        );
    }

    #[test]
    fn numbers_follow_htcondor() {
        assert_eq!(kinds("010")[0], TokenKind::Integer(10));
        assert_eq!(kinds("0x1F")[0], TokenKind::Integer(0));
        assert_eq!(kinds("99999999999999999999")[0], TokenKind::Integer(0));
        assert_eq!(kinds(".5")[0], TokenKind::Real(0.5));
        assert_eq!(kinds("1E3")[0], TokenKind::Real(1000.0));
        assert!(tokenize("5.", Syntax::New).is_err());
        assert!(tokenize("089", Syntax::New).is_err());
        assert_eq!(kinds("08.5")[0], TokenKind::Real(8.5));
    }

    #[test]
    fn escapes_and_concatenation() {
        assert_eq!(kinds(r#""a\101b""#)[0], TokenKind::Str("aAb".into()));
        assert_eq!(kinds(r#""\400""#)[0], TokenKind::Str(" 0".into()));
        assert_eq!(kinds(r#""\q""#)[0], TokenKind::Str("q".into()));
        assert_eq!(kinds(r#""a" "b""#)[0], TokenKind::Str("ab".into()));
        assert!(tokenize(r#""\0""#, Syntax::New).is_err());
    }

    #[test]
    fn old_strings_keep_backslashes() {
        let t = tokenize(r#""x\y\"z""#, Syntax::Old).unwrap();
        assert_eq!(t[0].kind, TokenKind::Str(r#"x\y"z"#.into()));
        let t = tokenize(r#""q\""#, Syntax::Old).unwrap();
        assert_eq!(t[0].kind, TokenKind::Str(r"q\".into()));
    }
}
