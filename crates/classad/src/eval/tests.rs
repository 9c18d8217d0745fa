#![allow(clippy::unwrap_used)]
use super::*;
use crate::parser::parse_expr;
use crate::Syntax;

fn ev(src: &str) -> Value {
    evaluate_standalone(&parse_expr(src, Syntax::New).unwrap())
}

#[test]
fn integer_division_truncates_like_c() {
    assert_eq!(ev("-7/2"), Value::Integer(-3));
    assert_eq!(ev("-7%2"), Value::Integer(-1));
    assert_eq!(ev("7/0"), Value::Error);
}

#[test]
fn request_memory_expression() {
    let ad = crate::parse_old_ad("ImageSize = 2500\nRM = ifthenelse(MemoryUsage =!= undefined,MemoryUsage,(ImageSize + 1023) / 1024)\n").unwrap();
    assert_eq!(evaluate_attr(&ad, "RM"), Value::Integer(3));
}

#[test]
fn reference_cycles_are_errors() {
    let ad = crate::parse_old_ad("a = b\nb = a\n").unwrap();
    assert_eq!(evaluate_attr(&ad, "a"), Value::Error);
}

#[test]
fn nested_scopes() {
    assert_eq!(ev("[a=1;b=[c=a]].b.c"), Value::Integer(1));
    assert_eq!(ev("[a=1]['A']"), Value::Undefined);
    assert_eq!(ev("[a=1][\"A\"]"), Value::Integer(1));
}

#[test]
fn unknown_function_is_error() {
    assert_eq!(ev("nosuchfunc(1)"), Value::Error);
    assert_eq!(ev("IFTHENELSE(1,2,3)"), Value::Integer(2));
}
