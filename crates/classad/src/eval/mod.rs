//! Evaluation of expressions in the scope of one ad, with HTCondor's semantics
//! (`src/classad/operators.cpp`, `fnCall.cpp`): `error` beats `undefined`, booleans count as
//! numbers in arithmetic and comparison, integer arithmetic wraps and divides like C, string
//! comparison ignores case except in `=?=`, and an unknown function is `error`.

mod functions;
mod operators;

use crate::ad::ClassAd;
use crate::ast::{Expr, Literal};
use crate::value::Value;

/// Deepest chain of attribute references followed before giving up with `error`
/// (guards against runaway recursion through references).
const MAX_REF_DEPTH: usize = 64;

/// Evaluate `expr` in the scope of `ad`.
pub fn evaluate(expr: &Expr, ad: &ClassAd) -> Value {
    let mut ev = Evaluator {
        scopes: vec![ad],
        active: Vec::new(),
        pair: None,
    };
    ev.eval(expr)
}

/// Evaluate `expr` as HTCondor's matchmaking does (`EvalBool(expr, my, target)`, a
/// `MatchClassAd`): `MY.x` is `my`'s, `TARGET.x` is `target`'s (evaluated in that ad, where
/// `TARGET` is `my`), and a name neither ad's own scope has is looked up in the other ad
/// (HTCondor's `alternateScope`).
pub fn evaluate_match(expr: &Expr, my: &ClassAd, target: &ClassAd) -> Value {
    let mut ev = Evaluator {
        scopes: vec![my],
        active: Vec::new(),
        pair: Some((my, target)),
    };
    ev.eval(expr)
}

/// Evaluate the attribute `name` of `ad` (`undefined` when it is missing).
pub fn evaluate_attr(ad: &ClassAd, name: &str) -> Value {
    evaluate(&Expr::attr(name), ad)
}

/// Attribute `name` of `ad` evaluated, when it is a string.
pub fn string_attr(ad: &ClassAd, name: &str) -> Option<String> {
    match evaluate_attr(ad, name) {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Attribute `name` of `ad` evaluated, when it is an integer.
pub fn integer_attr(ad: &ClassAd, name: &str) -> Option<i64> {
    evaluate_attr(ad, name).as_integer()
}

/// Evaluate `expr` with no ad in scope.
pub fn evaluate_standalone(expr: &Expr) -> Value {
    evaluate(expr, &ClassAd::new())
}

/// [`evaluate_match`] read as HTCondor's `EvalBool` does: true, or a non-zero number.
pub fn match_is_true(expr: &Expr, my: &ClassAd, target: &ClassAd) -> bool {
    operators::truth(&evaluate_match(expr, my, target)) == Truth::True
}

/// Evaluation state: the chain of ads in scope (outermost first) and the attributes being
/// evaluated right now (to turn reference cycles into `error`).
pub(crate) struct Evaluator<'a> {
    scopes: Vec<&'a ClassAd>,
    active: Vec<(*const ClassAd, String)>,
    /// The two ads of a match (MY first), when evaluating as matchmaking does.
    pair: Option<(&'a ClassAd, &'a ClassAd)>,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn eval(&mut self, expr: &'a Expr) -> Value {
        match expr {
            Expr::Literal(lit) => literal(lit),
            Expr::Attr {
                base: None,
                name,
                absolute,
            } => {
                if *absolute {
                    let root = self.scopes.first().copied();
                    return match root {
                        Some(ad) => self.lookup_in(ad, 0, name),
                        None => Value::Undefined,
                    };
                }
                self.lookup(name)
            }
            Expr::Attr {
                base: Some(base),
                name,
                ..
            } => {
                // `MY.x` / `TARGET.x` / `PARENT.x` are scope names, not attributes.
                if let Expr::Attr {
                    base: None,
                    name: scope,
                    absolute: false,
                } = base.as_ref()
                {
                    if scope.eq_ignore_ascii_case("my") && self.find(scope).is_none() {
                        let depth = self.scopes.len().saturating_sub(1);
                        return match self.scopes.last().copied() {
                            Some(ad) => self.lookup_in(ad, depth, name),
                            None => Value::Undefined,
                        };
                    }
                    if scope.eq_ignore_ascii_case("target") && self.find(scope).is_none() {
                        return self.in_other_ad(name);
                    }
                    if scope.eq_ignore_ascii_case("parent") && self.find(scope).is_none() {
                        let n = self.scopes.len();
                        if n >= 2 {
                            if let Some(ad) = self.scopes.get(n - 2).copied() {
                                return self.lookup_in(ad, n - 2, name);
                            }
                        }
                        return Value::Undefined;
                    }
                }
                // A base that names a record written in the ad keeps its lexical scope, so
                // `[a=1;b=[c=a]].b.c` sees `a`.
                if let Some(chain) = self.resolve_record(base, 0) {
                    let depth = chain.len() - 1;
                    let saved = std::mem::replace(&mut self.scopes, chain);
                    let v = match self.scopes.last().copied() {
                        Some(ad) => self.lookup_in(ad, depth, name),
                        None => Value::Undefined,
                    };
                    self.scopes = saved;
                    return v;
                }
                let base_value = self.eval(base);
                self.select(base_value, name)
            }
            Expr::Unary(op, x) => {
                let v = self.eval(x);
                operators::unary(*op, v)
            }
            Expr::Binary(op, a, b) => operators::binary(self, *op, a, b),
            Expr::Ternary(c, m, o) => {
                let cv = self.eval(c);
                match m {
                    None => {
                        // `c ?: o`: c unless it is undefined.
                        if cv.is_undefined() {
                            self.eval(o)
                        } else {
                            cv
                        }
                    }
                    Some(m) => match operators::truth(&cv) {
                        Truth::True => self.eval(m),
                        Truth::False => self.eval(o),
                        Truth::Undefined => Value::Undefined,
                        Truth::Error => Value::Error,
                    },
                }
            }
            Expr::Subscript(a, i) => {
                let av = self.eval(a);
                let iv = self.eval(i);
                subscript(self, av, iv)
            }
            Expr::Paren(x) => self.eval(x),
            Expr::Call(name, args) => functions::call(self, name, args),
            Expr::List(items) => Value::List(items.iter().map(|e| self.eval(e)).collect()),
            Expr::Record(ad) => Value::Ad(ad.clone()),
        }
    }

    /// Find `name` in the innermost scope that has it.
    fn find(&self, name: &str) -> Option<(usize, &'a ClassAd)> {
        self.scopes
            .iter()
            .enumerate()
            .rev()
            .find(|(_, ad)| ad.contains(name))
            .map(|(i, ad)| (i, *ad))
    }

    fn lookup(&mut self, name: &str) -> Value {
        match self.find(name) {
            Some((depth, ad)) => self.lookup_in(ad, depth, name),
            None => self.in_other_ad(name),
        }
    }

    /// Attribute `name` of the other ad of a match (the one whose scope we are not in),
    /// evaluated in that ad's scope; `undefined` outside a match.
    fn in_other_ad(&mut self, name: &str) -> Value {
        let Some((my, target)) = self.pair else {
            return Value::Undefined;
        };
        let here = self.scopes.first().copied();
        let other = if here.is_some_and(|ad| std::ptr::eq(ad, my)) {
            target
        } else {
            my
        };
        if !other.contains(name) {
            return Value::Undefined;
        }
        let saved = std::mem::replace(&mut self.scopes, vec![other]);
        let v = self.lookup_in(other, 0, name);
        self.scopes = saved;
        v
    }

    /// Evaluate attribute `name` of `ad`, which sits at `depth` in the scope chain.
    fn lookup_in(&mut self, ad: &'a ClassAd, depth: usize, name: &str) -> Value {
        let Some(expr) = ad.get(name) else {
            return Value::Undefined;
        };
        let key = (ad as *const ClassAd, name.to_ascii_lowercase());
        if self.active.contains(&key) || self.active.len() >= MAX_REF_DEPTH {
            return Value::Error;
        }
        // Evaluate with `ad` as the innermost scope.
        let saved: Vec<&'a ClassAd> = self.scopes.drain(depth + 1..).collect();
        self.active.push(key);
        let v = self.eval(expr);
        self.active.pop();
        self.scopes.extend(saved);
        v
    }

    /// The scope chain ending in the record that `expr` denotes, when it is a record literal
    /// in the tree (directly, or through attribute references).
    fn resolve_record(&self, expr: &'a Expr, hops: usize) -> Option<Vec<&'a ClassAd>> {
        if hops > MAX_REF_DEPTH {
            return None;
        }
        match expr {
            Expr::Record(ad) => {
                let mut chain = self.scopes.clone();
                chain.push(ad);
                Some(chain)
            }
            Expr::Paren(inner) => self.resolve_record(inner, hops + 1),
            Expr::Attr {
                base: None,
                name,
                absolute: false,
            } => {
                let (depth, ad) = self.find(name)?;
                let target = ad.get(name)?;
                let mut sub = Evaluator {
                    scopes: self.scopes.get(..=depth)?.to_vec(),
                    active: Vec::new(),
                    pair: self.pair,
                };
                sub.scopes.truncate(depth + 1);
                let chain = sub.resolve_record(target, hops + 1)?;
                Some(chain)
            }
            Expr::Attr {
                base: Some(base),
                name,
                ..
            } => {
                let chain = self.resolve_record(base, hops + 1)?;
                let inner = chain.last()?.get(name)?;
                let sub = Evaluator {
                    scopes: chain,
                    active: Vec::new(),
                    pair: self.pair,
                };
                sub.resolve_record(inner, hops + 1)
            }
            _ => None,
        }
    }

    /// `value.name`
    fn select(&mut self, value: Value, name: &str) -> Value {
        match value {
            Value::Ad(ad) => self.eval_in_nested(&ad, &Expr::attr(name)),
            Value::Undefined => Value::Undefined,
            _ => Value::Error,
        }
    }

    /// Evaluate `expr` inside a nested ad produced during evaluation.
    pub(crate) fn eval_in_nested(&mut self, ad: &ClassAd, expr: &Expr) -> Value {
        // The nested ad lives only as long as this call; evaluate it with a fresh evaluator
        // whose scope chain is the current chain plus the nested ad.
        let mut scopes: Vec<&ClassAd> = self.scopes.clone();
        scopes.push(ad);
        let mut inner = Evaluator {
            scopes,
            active: self.active.clone(),
            pair: self.pair,
        };
        inner.eval(expr)
    }
}

/// Three-valued truth of a condition: booleans and numbers (non-zero is true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    True,
    False,
    Undefined,
    Error,
}

fn literal(lit: &Literal) -> Value {
    match lit {
        Literal::Undefined => Value::Undefined,
        Literal::Error => Value::Error,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Integer(i) => Value::Integer(*i),
        Literal::Real(r) => Value::Real(*r),
        Literal::String(s) => Value::String(s.clone()),
    }
}

fn subscript(ev: &mut Evaluator<'_>, base: Value, index: Value) -> Value {
    match (base, index) {
        (Value::Error, _) | (_, Value::Error) => Value::Error,
        (Value::Undefined, _) | (_, Value::Undefined) => Value::Undefined,
        (Value::List(items), Value::Integer(i)) => usize::try_from(i)
            .ok()
            .and_then(|i| items.into_iter().nth(i))
            .unwrap_or(Value::Error),
        (Value::Ad(ad), Value::String(name)) => ev.eval_in_nested(&ad, &Expr::attr(&name)),
        _ => Value::Error,
    }
}

#[cfg(test)]
mod tests;
