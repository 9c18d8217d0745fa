//! Operators, following `src/classad/operators.cpp` (checked against HTCondor 24.0).

use super::{Evaluator, Truth};
use crate::ast::{BinaryOp, Expr, UnaryOp};
use crate::value::Value;

/// Truth of a condition: booleans, and numbers (non-zero is true); strings and the rest are
/// errors.
pub(crate) fn truth(v: &Value) -> Truth {
    match v {
        Value::Bool(true) => Truth::True,
        Value::Bool(false) => Truth::False,
        Value::Integer(i) => {
            if *i != 0 {
                Truth::True
            } else {
                Truth::False
            }
        }
        Value::Real(r) => {
            if *r != 0.0 {
                Truth::True
            } else {
                Truth::False
            }
        }
        Value::Undefined => Truth::Undefined,
        _ => Truth::Error,
    }
}

pub(crate) fn unary(op: UnaryOp, v: Value) -> Value {
    match (op, v) {
        (_, Value::Error) => Value::Error,
        (_, Value::Undefined) => Value::Undefined,
        (UnaryOp::Not, v) => match truth(&v) {
            Truth::True => Value::Bool(false),
            Truth::False => Value::Bool(true),
            Truth::Undefined => Value::Undefined,
            Truth::Error => Value::Error,
        },
        (UnaryOp::Minus, Value::Integer(i)) => Value::Integer(i.wrapping_neg()),
        (UnaryOp::Minus, Value::Real(r)) => Value::Real(-r),
        (UnaryOp::Plus, v @ (Value::Integer(_) | Value::Real(_))) => v,
        (UnaryOp::BitNot, Value::Integer(i)) => Value::Integer(!i),
        _ => Value::Error,
    }
}

pub(crate) fn binary<'a>(ev: &mut Evaluator<'a>, op: BinaryOp, a: &'a Expr, b: &'a Expr) -> Value {
    match op {
        BinaryOp::And => {
            let av = ev.eval(a);
            let at = truth(&av);
            match at {
                Truth::False => return Value::Bool(false),
                Truth::Error => return Value::Error,
                Truth::True | Truth::Undefined => {}
            }
            let bt = truth(&ev.eval(b));
            match (at, bt) {
                (_, Truth::Error) => Value::Error,
                (_, Truth::False) => Value::Bool(false),
                (Truth::True, Truth::True) => Value::Bool(true),
                _ => Value::Undefined,
            }
        }
        BinaryOp::Or => {
            let av = ev.eval(a);
            let at = truth(&av);
            match at {
                Truth::True => return Value::Bool(true),
                Truth::Error => return Value::Error,
                Truth::False | Truth::Undefined => {}
            }
            let bt = truth(&ev.eval(b));
            match (at, bt) {
                (_, Truth::Error) => Value::Error,
                (_, Truth::True) => Value::Bool(true),
                (Truth::False, Truth::False) => Value::Bool(false),
                _ => Value::Undefined,
            }
        }
        _ => {
            let av = ev.eval(a);
            let bv = ev.eval(b);
            strict_binary(op, av, bv)
        }
    }
}

/// Binary operators that evaluate both sides.
pub(crate) fn strict_binary(op: BinaryOp, a: Value, b: Value) -> Value {
    match op {
        BinaryOp::Is => is_identical(&a, &b),
        BinaryOp::Isnt => match is_identical(&a, &b) {
            Value::Bool(x) => Value::Bool(!x),
            other => other,
        },
        _ => {
            if a.is_error() || b.is_error() {
                return Value::Error;
            }
            if a.is_undefined() || b.is_undefined() {
                return Value::Undefined;
            }
            match op {
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => {
                    arithmetic(op, &a, &b)
                }
                BinaryOp::Less
                | BinaryOp::LessEq
                | BinaryOp::Greater
                | BinaryOp::GreaterEq
                | BinaryOp::Eq
                | BinaryOp::NotEq => compare(op, &a, &b),
                _ => bitwise(op, &a, &b),
            }
        }
    }
}

/// `=?=`: same type and same value; strings compare case-sensitively.
fn is_identical(a: &Value, b: &Value) -> Value {
    Value::Bool(match (a, b) {
        (Value::Undefined, Value::Undefined) | (Value::Error, Value::Error) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Integer(x), Value::Integer(y)) => x == y,
        #[allow(clippy::float_cmp)]
        (Value::Real(x), Value::Real(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        // Two lists or two ads cannot be compared; a list against anything else is false.
        (Value::List(_), Value::List(_)) | (Value::Ad(_), Value::Ad(_)) => return Value::Error,
        _ => false,
    })
}

/// A number for arithmetic and comparison: booleans count as 0/1.
enum Num {
    Int(i64),
    Real(f64),
}

fn number(v: &Value) -> Option<Num> {
    match v {
        Value::Integer(i) => Some(Num::Int(*i)),
        Value::Real(r) => Some(Num::Real(*r)),
        Value::Bool(b) => Some(Num::Int(i64::from(*b))),
        _ => None,
    }
}

#[allow(clippy::cast_precision_loss)]
fn as_f64(n: &Num) -> f64 {
    match n {
        Num::Int(i) => *i as f64,
        Num::Real(r) => *r,
    }
}

fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Value {
    let (Some(x), Some(y)) = (number(a), number(b)) else {
        return Value::Error;
    };
    match (&x, &y) {
        (Num::Int(x), Num::Int(y)) => {
            let (x, y) = (*x, *y);
            match op {
                BinaryOp::Add => Value::Integer(x.wrapping_add(y)),
                BinaryOp::Sub => Value::Integer(x.wrapping_sub(y)),
                BinaryOp::Mul => Value::Integer(x.wrapping_mul(y)),
                // HTCondor special-cases the one overflowing division.
                BinaryOp::Div if y == 0 => Value::Error,
                BinaryOp::Div if x == i64::MIN && y == -1 => Value::Integer(i64::MAX),
                BinaryOp::Div => Value::Integer(x / y),
                BinaryOp::Mod if y == 0 => Value::Error,
                BinaryOp::Mod if y == -1 => Value::Integer(0),
                BinaryOp::Mod => Value::Integer(x % y),
                _ => Value::Error,
            }
        }
        _ => {
            let (x, y) = (as_f64(&x), as_f64(&y));
            let r = match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div if y == 0.0 => return Value::Error,
                BinaryOp::Div => x / y,
                // `%` on reals is an error in HTCondor.
                _ => return Value::Error,
            };
            if r.is_finite() {
                Value::Real(r)
            } else {
                Value::Error
            }
        }
    }
}

fn compare(op: BinaryOp, a: &Value, b: &Value) -> Value {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::String(x), Value::String(y)) => Some(
            x.bytes()
                .map(|c| c.to_ascii_lowercase())
                .cmp(y.bytes().map(|c| c.to_ascii_lowercase())),
        ),
        _ => match (number(a), number(b)) {
            (Some(Num::Int(x)), Some(Num::Int(y))) => Some(x.cmp(&y)),
            (Some(x), Some(y)) => as_f64(&x).partial_cmp(&as_f64(&y)),
            _ => return Value::Error,
        },
    };
    let Some(ord) = ord else {
        // NaN compares false except for `!=`.
        return Value::Bool(op == BinaryOp::NotEq);
    };
    Value::Bool(match op {
        BinaryOp::Less => ord == Ordering::Less,
        BinaryOp::LessEq => ord != Ordering::Greater,
        BinaryOp::Greater => ord == Ordering::Greater,
        BinaryOp::GreaterEq => ord != Ordering::Less,
        BinaryOp::Eq => ord == Ordering::Equal,
        _ => ord != Ordering::Equal,
    })
}

fn bitwise(op: BinaryOp, a: &Value, b: &Value) -> Value {
    let (Value::Integer(x), Value::Integer(y)) = (a, b) else {
        return Value::Error;
    };
    let (x, y) = (*x, *y);
    // Shift counts are masked to 0..63 as x86 does for `<<`/`>>` on 64-bit values; negative
    // left operands follow `Operation::doBitwise`, which shifts them by hand.
    let mask = |n: i64| u32::try_from(n & 63).unwrap_or(0);
    Value::Integer(match op {
        BinaryOp::BitAnd => x & y,
        BinaryOp::BitOr => x | y,
        BinaryOp::BitXor => x ^ y,
        BinaryOp::Shl => x.wrapping_shl(mask(y)),
        BinaryOp::Shr if x >= 0 => x.wrapping_shr(mask(y)),
        // One arithmetic shift per step, at most 64 steps: negative counts do nothing.
        BinaryOp::Shr => x >> u32::try_from(y.clamp(0, 63)).unwrap_or(0),
        BinaryOp::UShr if x >= 0 => x.wrapping_shr(mask(y)),
        BinaryOp::UShr => ((x >> 1) & i64::MAX).wrapping_shr(mask(y.wrapping_sub(1))),
        _ => return Value::Error,
    })
}
