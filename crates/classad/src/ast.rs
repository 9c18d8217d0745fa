//! The expression tree, as HTCondor's parser builds it (parentheses are kept, so printing
//! reproduces what was written).

use crate::ad::ClassAd;

/// A literal constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `undefined`
    Undefined,
    /// `error`
    Error,
    /// `true` / `false`
    Bool(bool),
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// A string (UTF-8).
    String(String),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `+x`
    Plus,
    /// `-x`
    Minus,
    /// `!x`
    Not,
    /// `~x`
    BitNot,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `<`
    Less,
    /// `<=`
    LessEq,
    /// `!=`
    NotEq,
    /// `==`
    Eq,
    /// `>=`
    GreaterEq,
    /// `>`
    Greater,
    /// `=?=` / `is`
    Is,
    /// `=!=` / `isnt`
    Isnt,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `||`
    Or,
    /// `&&`
    And,
    /// `|`
    BitOr,
    /// `^`
    BitXor,
    /// `&`
    BitAnd,
    /// `<<`
    Shl,
    /// `>>`
    Shr,
    /// `>>>`
    UShr,
}

impl BinaryOp {
    /// The operator as HTCondor's new-syntax unparser writes it, with its spaces.
    pub fn new_text(self) -> &'static str {
        match self {
            BinaryOp::Less => " < ",
            BinaryOp::LessEq => " <= ",
            BinaryOp::NotEq => " != ",
            BinaryOp::Eq => " == ",
            BinaryOp::GreaterEq => " >= ",
            BinaryOp::Greater => " > ",
            BinaryOp::Is => " is ",
            BinaryOp::Isnt => " isnt ",
            BinaryOp::Add => " + ",
            BinaryOp::Sub => " - ",
            BinaryOp::Mul => " * ",
            BinaryOp::Div => " / ",
            BinaryOp::Mod => " % ",
            BinaryOp::Or => " || ",
            BinaryOp::And => " && ",
            BinaryOp::BitOr => " | ",
            BinaryOp::BitXor => " ^ ",
            BinaryOp::BitAnd => " & ",
            BinaryOp::Shl => " << ",
            BinaryOp::Shr => " >> ",
            BinaryOp::UShr => " >>> ",
        }
    }

    /// The operator in old syntax (`=?=`/`=!=` for `is`/`isnt`).
    pub fn old_text(self) -> &'static str {
        match self {
            BinaryOp::Is => " =?= ",
            BinaryOp::Isnt => " =!= ",
            other => other.new_text(),
        }
    }
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Literal(Literal),
    /// `name`, `.name` (absolute) or `base.name` (`MY.x`, `TARGET.x`, `ad.x`).
    Attr {
        /// The expression selected from, if any.
        base: Option<Box<Expr>>,
        /// The attribute name as written (names compare case-insensitively).
        name: String,
        /// `.name`: look up from the outermost ad.
        absolute: bool,
    },
    /// `op x`
    Unary(UnaryOp, Box<Expr>),
    /// `x op y`
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `c ? a : b`, or `c ?: b` when the middle is missing.
    Ternary(Box<Expr>, Option<Box<Expr>>, Box<Expr>),
    /// `x[i]`
    Subscript(Box<Expr>, Box<Expr>),
    /// `(x)`, kept so the text round-trips.
    Paren(Box<Expr>),
    /// `name(args...)`
    Call(String, Vec<Expr>),
    /// `{ a, b }`
    List(Vec<Expr>),
    /// `[ a = 1; b = 2 ]`
    Record(Box<ClassAd>),
}

impl Expr {
    /// A plain attribute reference `name`.
    pub fn attr(name: &str) -> Expr {
        Expr::Attr {
            base: None,
            name: name.to_owned(),
            absolute: false,
        }
    }

    /// A string literal.
    pub fn string(s: impl Into<String>) -> Expr {
        Expr::Literal(Literal::String(s.into()))
    }

    /// An integer literal.
    pub fn integer(i: i64) -> Expr {
        Expr::Literal(Literal::Integer(i))
    }

    /// A real literal.
    pub fn real(r: f64) -> Expr {
        Expr::Literal(Literal::Real(r))
    }

    /// A boolean literal.
    pub fn boolean(b: bool) -> Expr {
        Expr::Literal(Literal::Bool(b))
    }

    /// The string, when this is a string literal.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Expr::Literal(Literal::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// Call `f` on each direct child expression of `expr`.
pub(crate) fn for_each_child<'a>(expr: &'a Expr, mut f: impl FnMut(&'a Expr)) {
    match expr {
        Expr::Literal(_) => {}
        Expr::Attr { base, .. } => {
            if let Some(b) = base {
                f(b);
            }
        }
        Expr::Unary(_, x) | Expr::Paren(x) => f(x),
        Expr::Binary(_, a, b) | Expr::Subscript(a, b) => {
            f(a);
            f(b);
        }
        Expr::Ternary(c, m, o) => {
            f(c);
            if let Some(m) = m {
                f(m);
            }
            f(o);
        }
        Expr::Call(_, args) | Expr::List(args) => args.iter().for_each(f),
        Expr::Record(ad) => ad.iter().for_each(|(_, e)| f(e)),
    }
}
