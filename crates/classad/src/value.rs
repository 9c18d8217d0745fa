//! Values: what an expression evaluates to.

use std::fmt;

use crate::ad::ClassAd;
use crate::ast::{Expr, Literal};
use crate::print::expr_to_string;
use crate::Syntax;

/// The result of evaluating an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A reference to something that does not exist, or a result that depends on one.
    Undefined,
    /// A type error or other failure (division by zero, bad argument).
    Error,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// A string.
    String(String),
    /// A list of values.
    List(Vec<Value>),
    /// A nested ad (kept as expressions; its attributes evaluate in its own scope).
    Ad(Box<ClassAd>),
}

impl Value {
    /// The value as an expression (a literal, list or record), e.g. to print it.
    pub fn to_expr(&self) -> Expr {
        match self {
            Value::Undefined => Expr::Literal(Literal::Undefined),
            Value::Error => Expr::Literal(Literal::Error),
            Value::Bool(b) => Expr::Literal(Literal::Bool(*b)),
            Value::Integer(i) => Expr::Literal(Literal::Integer(*i)),
            Value::Real(r) => Expr::Literal(Literal::Real(*r)),
            Value::String(s) => Expr::Literal(Literal::String(s.clone())),
            Value::List(items) => Expr::List(items.iter().map(Value::to_expr).collect()),
            Value::Ad(ad) => Expr::Record(ad.clone()),
        }
    }

    /// The integer, when this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a double, when this is an integer or real.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            #[allow(clippy::cast_precision_loss)]
            Value::Integer(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            _ => None,
        }
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, when this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// True for `undefined`.
    pub fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }

    /// True for `error`.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error)
    }
}

/// New-syntax text of the value (`"x"`, `1.500000000000000E+00`, `{ 1,2 }`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&expr_to_string(&self.to_expr(), Syntax::New))
    }
}
