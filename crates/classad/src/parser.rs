//! Parser: tokens to [`Expr`] and [`ClassAd`], following HTCondor's `source.cpp` grammar and
//! precedence (lowest first): `?:`, `||`, `&&`, `|`, `^`, `&`, equality (`== != =?= =!= is
//! isnt`), relational, shifts, additive, multiplicative, unary, postfix (`.name`, `[i]`).

use crate::ad::ClassAd;
use crate::ast::{BinaryOp, Expr, Literal, UnaryOp};
use crate::error::{ParseError, ParseErrorKind};
use crate::lexer::{tokenize, Punct, Token, TokenKind};
use crate::span::Span;
use crate::Syntax;

/// Deepest expression nesting accepted (each level costs stack in the parser, printer and
/// evaluator; HTCondor allows 1000, far beyond any real job ad).
pub const MAX_DEPTH: usize = 128;

/// Parse one complete expression.
///
/// # Errors
/// A [`ParseError`] with the location of the first token that does not fit.
pub fn parse_expr(src: &str, syntax: Syntax) -> Result<Expr, ParseError> {
    parse_expr_inner(src, syntax).map_err(|e| e.with_source(src))
}

pub(crate) fn parse_expr_inner(src: &str, syntax: Syntax) -> Result<Expr, ParseError> {
    let tokens = tokenize(src, syntax)?;
    let mut p = Parser::new(&tokens);
    let expr = p.expression()?;
    p.expect_end("end of expression")?;
    check_tree_depth(&expr)?;
    Ok(expr)
}

/// Deepest tree accepted, counting operator chains such as `a && b && c ...` (which the
/// grammar builds as left-deep trees without recursion).
pub const MAX_TREE_DEPTH: usize = 512;

/// Reject trees deeper than [`MAX_TREE_DEPTH`] so printing and evaluation (recursive) stay
/// within a small stack.
fn check_tree_depth(expr: &Expr) -> Result<(), ParseError> {
    let mut stack = vec![(expr, 1usize)];
    while let Some((e, d)) = stack.pop() {
        if d > MAX_TREE_DEPTH {
            return Err(ParseError::new(ParseErrorKind::TooDeep, Span::default()));
        }
        crate::ast::for_each_child(e, |c| stack.push((c, d + 1)));
    }
    Ok(())
}

/// Parse a new-syntax ad `[ a = 1; b = "x" ]` that makes up the whole of `src`.
///
/// # Errors
/// A [`ParseError`] with line and column.
pub fn parse_new_ad(src: &str) -> Result<ClassAd, ParseError> {
    let tokens = tokenize(src, Syntax::New).map_err(|e| e.with_source(src))?;
    let mut p = Parser::new(&tokens);
    let ad = p.record().map_err(|e| e.with_source(src))?;
    p.expect_end("end of input after ']'")
        .map_err(|e| e.with_source(src))?;
    for (_, e) in ad.iter() {
        check_tree_depth(e).map_err(|e| e.with_source(src))?;
    }
    Ok(ad)
}

/// Parse a sequence of new-syntax ads `[...] [...]` (whitespace or nothing between them).
///
/// # Errors
/// A [`ParseError`] with line and column.
pub fn parse_new_ads(src: &str) -> Result<Vec<ClassAd>, ParseError> {
    let tokens = tokenize(src, Syntax::New).map_err(|e| e.with_source(src))?;
    let mut p = Parser::new(&tokens);
    let mut ads = Vec::new();
    while !p.at_end() {
        let ad = p.record().map_err(|e| e.with_source(src))?;
        for (_, e) in ad.iter() {
            check_tree_depth(e).map_err(|e| e.with_source(src))?;
        }
        ads.push(ad);
    }
    Ok(ads)
}

/// Parse an old-syntax ad: one `Name = expression` per line; blank lines and lines starting
/// with `#` are skipped.
///
/// This is what `ClassAd::Insert(line)` accepts (HTCondor's `classad.cpp`): the name is the
/// text before the first `=`, trimmed, and must be a plain identifier; the rest is an
/// old-syntax expression. A later line for the same name replaces the earlier one.
///
/// # Errors
/// A [`ParseError`] naming the line, column and attribute.
pub fn parse_old_ad(src: &str) -> Result<ClassAd, ParseError> {
    let mut ad = ClassAd::new();
    for_each_old_line(src, |line, start| {
        if let Some(line) = line {
            let (name, expr) = parse_old_line_at(line, start)?;
            ad.insert(name, expr);
        }
        Ok(())
    })?;
    Ok(ad)
}

/// Parse old-syntax ads separated by blank lines.
///
/// # Errors
/// A [`ParseError`] naming the line, column and attribute.
pub fn parse_old_ads(src: &str) -> Result<Vec<ClassAd>, ParseError> {
    let mut ads = Vec::new();
    let mut current = ClassAd::new();
    for_each_old_line(src, |line, start| {
        match line {
            Some(line) => {
                let (name, expr) = parse_old_line_at(line, start)?;
                current.insert(name, expr);
            }
            None if !current.is_empty() => ads.push(std::mem::take(&mut current)),
            None => {}
        }
        Ok(())
    })?;
    if !current.is_empty() {
        ads.push(current);
    }
    Ok(ads)
}

/// Call `f` with each content line (without its line ending) and its byte offset, or with
/// `None` for a blank line; `#` comment lines are skipped. Errors get `src`'s line numbers.
fn for_each_old_line(
    src: &str,
    mut f: impl FnMut(Option<&str>, usize) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    let mut offset = 0;
    for raw_line in src.split_inclusive('\n') {
        let start = offset;
        offset += raw_line.len();
        let line = raw_line.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim();
        let result = if trimmed.is_empty() {
            f(None, start)
        } else if trimmed.starts_with('#') {
            Ok(())
        } else {
            f(Some(line), start)
        };
        result.map_err(|e| e.with_source(src))?;
    }
    Ok(())
}

/// Parse one old-syntax `Name = expression` line on its own, as the JobRouter parses each
/// line of a hook's stdout.
///
/// # Errors
/// A [`ParseError`] naming the column and attribute.
pub fn parse_old_line(line: &str) -> Result<(String, Expr), ParseError> {
    parse_old_line_at(line, 0).map_err(|e| e.with_source(line))
}

fn parse_old_line_at(line: &str, base: usize) -> Result<(String, Expr), ParseError> {
    let Some(eq) = line.find('=') else {
        return Err(ParseError::new(
            ParseErrorKind::NotAnAssignment,
            Span::new(base, base + line.len()),
        ));
    };
    let name_part = line.get(..eq).unwrap_or("");
    let name = name_part.trim();
    let name_start = base + (name_part.len() - name_part.trim_start().len());
    if !is_identifier(name) {
        return Err(ParseError::new(
            ParseErrorKind::BadAttributeName(name.to_owned()),
            Span::new(name_start, name_start + name.len().max(1)),
        ));
    }
    let rhs = line.get(eq + 1..).unwrap_or("");
    let rhs_base = base + eq + 1;
    let expr = parse_expr_inner(rhs, Syntax::Old).map_err(|e| {
        let mut e = e;
        e.span = e.span.shifted(rhs_base);
        e.with_attribute(name)
    })?;
    Ok((name.to_owned(), expr))
}

/// True for names that need no quoting: `[A-Za-z_][A-Za-z0-9_]*` (`identifierNeedsQuoting`).
pub fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return false,
    }
    bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    depth: usize,
}

impl<'t> Parser<'t> {
    fn new(tokens: &'t [Token]) -> Parser<'t> {
        Parser {
            tokens,
            pos: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> &TokenKind {
        self.tokens
            .get(self.pos)
            .map_or(&TokenKind::End, |t| &t.kind)
    }

    fn span(&self) -> Span {
        self.tokens
            .get(self.pos)
            .or_else(|| self.tokens.last())
            .map_or(Span::default(), |t| t.span)
    }

    fn at_end(&self) -> bool {
        matches!(self.peek(), TokenKind::End)
    }

    fn peek_punct(&self) -> Option<Punct> {
        match self.peek() {
            TokenKind::Punct(p) => Some(*p),
            _ => None,
        }
    }

    fn eat(&mut self, punct: Punct) -> bool {
        if self.peek_punct() == Some(punct) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn unexpected(&self, expected: &'static str) -> ParseError {
        ParseError::new(
            ParseErrorKind::Unexpected {
                found: describe(self.peek()),
                expected,
            },
            self.span(),
        )
    }

    fn expect(&mut self, punct: Punct, expected: &'static str) -> Result<(), ParseError> {
        if self.eat(punct) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_end(&self, expected: &'static str) -> Result<(), ParseError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(ParseErrorKind::TooDeep, self.span()));
        }
        Ok(())
    }

    /// Expression ::= LogicalOr [ '?' [Expression] ':' Expression ]
    fn expression(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let result = self.expression_body();
        self.depth -= 1;
        result
    }

    fn expression_body(&mut self) -> Result<Expr, ParseError> {
        let cond = self.binary(0)?;
        if !self.eat(Punct::Question) {
            return Ok(cond);
        }
        let middle = if self.eat(Punct::Colon) {
            None
        } else {
            let m = self.expression()?;
            self.expect(Punct::Colon, "':' of the conditional expression")?;
            Some(Box::new(m))
        };
        let other = self.expression()?;
        Ok(Expr::Ternary(Box::new(cond), middle, Box::new(other)))
    }

    /// Left-associative binary operators by precedence climbing: operators of `min_level`
    /// or tighter (levels in [`LEVELS`], lowest first). One stack frame per operand, not per
    /// precedence level, keeps deep nesting cheap.
    fn binary(&mut self, min_level: usize) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        let mut chain = 0usize;
        while let Some((level, op)) = self.peek_punct().and_then(binary_op) {
            if level < min_level {
                break;
            }
            chain += 1;
            if chain > MAX_TREE_DEPTH {
                // Stop before building a tree too deep to print or drop recursively.
                return Err(ParseError::new(ParseErrorKind::TooDeep, self.span()));
            }
            self.pos += 1;
            let right = self.binary(level + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let op = match self.peek_punct() {
            Some(Punct::Minus) => UnaryOp::Minus,
            Some(Punct::Plus) => UnaryOp::Plus,
            Some(Punct::Tilde) => UnaryOp::BitNot,
            Some(Punct::Bang) => UnaryOp::Not,
            _ => return self.postfix(),
        };
        self.pos += 1;
        self.enter()?;
        let operand = self.unary();
        self.depth -= 1;
        Ok(Expr::Unary(op, Box::new(operand?)))
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.primary()?;
        loop {
            if self.eat(Punct::OpenBox) {
                let index = self.expression()?;
                self.expect(Punct::CloseBox, "']' closing the subscript")?;
                expr = Expr::Subscript(Box::new(expr), Box::new(index));
            } else if self.eat(Punct::Dot) {
                let TokenKind::Ident { name, .. } = self.peek().clone() else {
                    return Err(self.unexpected("an attribute name after '.'"));
                };
                self.pos += 1;
                expr = Expr::Attr {
                    base: Some(Box::new(expr)),
                    name,
                    absolute: false,
                };
            } else {
                return Ok(expr);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        match self.peek().clone() {
            TokenKind::Ident { name, .. } => {
                self.pos += 1;
                if self.peek_punct() == Some(Punct::OpenParen) {
                    let args = self.arguments()?;
                    return Ok(Expr::Call(name, args));
                }
                Ok(Expr::attr(&name))
            }
            TokenKind::Punct(Punct::Dot) => {
                self.pos += 1;
                let TokenKind::Ident { name, .. } = self.peek().clone() else {
                    return Err(self.unexpected("an attribute name after '.'"));
                };
                self.pos += 1;
                Ok(Expr::Attr {
                    base: None,
                    name,
                    absolute: true,
                })
            }
            TokenKind::Punct(Punct::OpenParen) => {
                self.pos += 1;
                let inner = self.expression()?;
                self.expect(Punct::CloseParen, "')'")?;
                Ok(Expr::Paren(Box::new(inner)))
            }
            TokenKind::Punct(Punct::OpenBox) => {
                self.enter()?;
                let ad = self.record();
                self.depth -= 1;
                Ok(Expr::Record(Box::new(ad?)))
            }
            TokenKind::Punct(Punct::OpenBrace) => {
                self.enter()?;
                let list = self.list();
                self.depth -= 1;
                Ok(Expr::List(list?))
            }
            TokenKind::Integer(i) => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::Integer(i)))
            }
            TokenKind::Real(r) => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::Real(r)))
            }
            TokenKind::Str(s) => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::String(s)))
            }
            TokenKind::Bool(b) => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::Bool(b)))
            }
            TokenKind::Undefined => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::Undefined))
            }
            TokenKind::Error => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::Error))
            }
            _ => Err(self.unexpected("an expression")),
        }
    }

    /// '(' [ Expression { ',' Expression } ] ')'
    fn arguments(&mut self) -> Result<Vec<Expr>, ParseError> {
        self.expect(Punct::OpenParen, "'('")?;
        let mut args = Vec::new();
        while !self.eat(Punct::CloseParen) {
            args.push(self.expression()?);
            if !self.eat(Punct::Comma) && self.peek_punct() != Some(Punct::CloseParen) {
                return Err(self.unexpected("',' or ')' in the argument list"));
            }
        }
        Ok(args)
    }

    /// '{' [ Expression { ',' Expression } [','] ] '}'
    fn list(&mut self) -> Result<Vec<Expr>, ParseError> {
        self.expect(Punct::OpenBrace, "'{'")?;
        let mut items = Vec::new();
        while !self.eat(Punct::CloseBrace) {
            items.push(self.expression()?);
            if !self.eat(Punct::Comma) && self.peek_punct() != Some(Punct::CloseBrace) {
                return Err(self.unexpected("',' or '}' in the list"));
            }
        }
        Ok(items)
    }

    /// '[' { Name '=' Expression ';'+ } ']' (empty statements allowed, as in HTCondor).
    fn record(&mut self) -> Result<ClassAd, ParseError> {
        self.expect(Punct::OpenBox, "'[' starting a ClassAd")?;
        let mut ad = ClassAd::new();
        loop {
            if self.eat(Punct::CloseBox) {
                return Ok(ad);
            }
            if self.eat(Punct::Semicolon) {
                continue;
            }
            let TokenKind::Ident { name, .. } = self.peek().clone() else {
                return Err(self.unexpected("an attribute name or ']'"));
            };
            self.pos += 1;
            self.expect(Punct::Assign, "'=' after the attribute name")?;
            let value = self.expression()?;
            ad.insert(name, value);
            match self.peek_punct() {
                Some(Punct::Semicolon | Punct::CloseBox) => {}
                _ => return Err(self.unexpected("';' or ']' after the attribute value")),
            }
        }
    }
}

/// Binary operator levels, lowest precedence first.
const LEVELS: [&[(Punct, BinaryOp)]; 10] = [
    &[(Punct::PipePipe, BinaryOp::Or)],
    &[(Punct::AmpAmp, BinaryOp::And)],
    &[(Punct::Pipe, BinaryOp::BitOr)],
    &[(Punct::Caret, BinaryOp::BitXor)],
    &[(Punct::Amp, BinaryOp::BitAnd)],
    &[
        (Punct::EqEq, BinaryOp::Eq),
        (Punct::NotEq, BinaryOp::NotEq),
        (Punct::MetaEq, BinaryOp::Is),
        (Punct::MetaNe, BinaryOp::Isnt),
    ],
    &[
        (Punct::Less, BinaryOp::Less),
        (Punct::LessEq, BinaryOp::LessEq),
        (Punct::Greater, BinaryOp::Greater),
        (Punct::GreaterEq, BinaryOp::GreaterEq),
    ],
    &[
        (Punct::Shl, BinaryOp::Shl),
        (Punct::Shr, BinaryOp::Shr),
        (Punct::UShr, BinaryOp::UShr),
    ],
    &[(Punct::Plus, BinaryOp::Add), (Punct::Minus, BinaryOp::Sub)],
    &[
        (Punct::Star, BinaryOp::Mul),
        (Punct::Slash, BinaryOp::Div),
        (Punct::Percent, BinaryOp::Mod),
    ],
];

/// The precedence level and operator `punct` stands for, if it is a binary operator.
fn binary_op(punct: Punct) -> Option<(usize, BinaryOp)> {
    LEVELS.iter().enumerate().find_map(|(level, ops)| {
        ops.iter()
            .find(|(p, _)| *p == punct)
            .map(|(_, op)| (level, *op))
    })
}

fn describe(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Integer(i) => format!("integer {i}"),
        TokenKind::Real(r) => format!("real {r}"),
        TokenKind::Str(s) => format!("string {s:?}"),
        TokenKind::Bool(b) => format!("{b}"),
        TokenKind::Undefined => "undefined".into(),
        TokenKind::Error => "error".into(),
        TokenKind::Ident { name, .. } => format!("name {name:?}"),
        TokenKind::Punct(p) => format!("{:?}", punct_text(*p)),
        TokenKind::End => "end of input".into(),
    }
}

fn punct_text(p: Punct) -> &'static str {
    match p {
        Punct::Dot => ".",
        Punct::Star => "*",
        Punct::Slash => "/",
        Punct::Percent => "%",
        Punct::Plus => "+",
        Punct::Minus => "-",
        Punct::Tilde => "~",
        Punct::Caret => "^",
        Punct::Question => "?",
        Punct::Colon => ":",
        Punct::Semicolon => ";",
        Punct::Comma => ",",
        Punct::OpenBox => "[",
        Punct::CloseBox => "]",
        Punct::OpenParen => "(",
        Punct::CloseParen => ")",
        Punct::OpenBrace => "{",
        Punct::CloseBrace => "}",
        Punct::Amp => "&",
        Punct::AmpAmp => "&&",
        Punct::Pipe => "|",
        Punct::PipePipe => "||",
        Punct::Less => "<",
        Punct::LessEq => "<=",
        Punct::Shl => "<<",
        Punct::Greater => ">",
        Punct::GreaterEq => ">=",
        Punct::Shr => ">>",
        Punct::UShr => ">>>",
        Punct::Assign => "=",
        Punct::EqEq => "==",
        Punct::MetaEq => "=?=",
        Punct::MetaNe => "=!=",
        Punct::Bang => "!",
        Punct::NotEq => "!=",
    }
}
