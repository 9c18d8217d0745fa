//! Built-in functions, following `src/classad/fnCall.cpp` and HTCondor's `compat_classad.cpp`
//! (`stringListMember` and friends), checked against HTCondor 24.0. Names are
//! case-insensitive; an unknown name or a wrong argument count gives `error`.

use super::{operators, Evaluator, Truth};
use crate::ast::{BinaryOp, Expr};
use crate::print::{expr_to_string, format_real};
use crate::value::Value;
use crate::Syntax;

pub(crate) fn call<'a>(ev: &mut Evaluator<'a>, name: &str, args: &'a [Expr]) -> Value {
    let lname = name.to_ascii_lowercase();
    // Lazy functions first: they must not evaluate every argument.
    if lname == "ifthenelse" {
        let [c, a, b] = args else {
            return Value::Error;
        };
        return match operators::truth(&ev.eval(c)) {
            Truth::True => ev.eval(a),
            Truth::False => ev.eval(b),
            Truth::Undefined => Value::Undefined,
            Truth::Error => Value::Error,
        };
    }
    let values: Vec<Value> = args.iter().map(|a| ev.eval(a)).collect();
    call_strict(&lname, values)
}

fn call_strict(name: &str, args: Vec<Value>) -> Value {
    match (name, args.as_slice()) {
        ("isundefined", [v]) => Value::Bool(v.is_undefined()),
        ("iserror", [v]) => Value::Bool(v.is_error()),
        ("isstring", [v]) => Value::Bool(matches!(v, Value::String(_))),
        ("isinteger", [v]) => Value::Bool(matches!(v, Value::Integer(_))),
        ("isreal", [v]) => Value::Bool(matches!(v, Value::Real(_))),
        ("isboolean", [v]) => Value::Bool(matches!(v, Value::Bool(_))),
        ("islist", [v]) => Value::Bool(matches!(v, Value::List(_))),
        ("isclassad", [v]) => Value::Bool(matches!(v, Value::Ad(_))),
        ("strcat", _) => strcat(&args),
        ("substr", [s, off]) => substr(s, off, None),
        ("substr", [s, off, len]) => substr(s, off, Some(len)),
        ("size", [v]) => size(v),
        ("tolower" | "toupper", [v]) => match to_text(v) {
            Ok(s) if name == "tolower" => Value::String(s.to_ascii_lowercase()),
            Ok(s) => Value::String(s.to_ascii_uppercase()),
            Err(v) => v,
        },
        ("int", [v]) => to_int(v),
        ("real", [v]) => to_real(v),
        ("string", [v]) => match to_text(v) {
            Ok(s) => Value::String(s),
            Err(v) => v,
        },
        ("floor" | "ceiling" | "round", [v]) => rounding(name, v),
        ("min" | "max" | "sum" | "avg", [v]) => aggregate(name, v),
        ("member", [x, list]) => member(x, list, BinaryOp::Eq),
        ("identicalmember", [x, list]) => member(x, list, BinaryOp::Is),
        ("stringlistmember", [item, list]) => string_list_member(item, list, None, false),
        ("stringlistmember", [item, list, d]) => string_list_member(item, list, Some(d), false),
        ("stringlistimember", [item, list]) => string_list_member(item, list, None, true),
        ("stringlistimember", [item, list, d]) => string_list_member(item, list, Some(d), true),
        ("regexp", [p, t]) => regexp(p, t, None),
        ("regexp", [p, t, o]) => regexp(p, t, Some(o)),
        ("strcmp" | "stricmp", [a, b]) => strcmp(a, b, name == "stricmp"),
        ("pow", [a, b]) => pow(a, b),
        ("join", [sep, rest @ ..]) => join(sep, rest),
        _ => Value::Error,
    }
}

/// A value as text for `strcat`/`string`/`toUpper`: `Err` carries `undefined`/`error`.
fn to_text(v: &Value) -> Result<String, Value> {
    match v {
        Value::Undefined => Err(Value::Undefined),
        Value::Error => Err(Value::Error),
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Real(r) => Ok(format_real(*r, Syntax::New)),
        Value::Bool(b) => Ok(b.to_string()),
        other => Ok(expr_to_string(&other.to_expr(), Syntax::New)),
    }
}

fn strcat(args: &[Value]) -> Value {
    // The first undefined or error argument decides, in order.
    let mut out = String::new();
    for a in args {
        match to_text(a) {
            Ok(s) => out.push_str(&s),
            Err(v) => return v,
        }
    }
    Value::String(out)
}

fn substr(s: &Value, off: &Value, len: Option<&Value>) -> Value {
    // Any undefined argument gives undefined; then a wrong type (error included) gives error.
    if s.is_undefined() || off.is_undefined() || len.is_some_and(Value::is_undefined) {
        return Value::Undefined;
    }
    let s = match s {
        Value::String(s) => s,
        Value::Undefined => return Value::Undefined,
        _ => return Value::Error,
    };
    // HTCondor reads offset and length into a C `int`: keep only the low 32 bits.
    let mut off = match off {
        Value::Integer(i) => i64::from(truncate_to_c_int(*i)),
        Value::Undefined => return Value::Undefined,
        _ => return Value::Error,
    };
    let len = match len {
        None => None,
        Some(Value::Integer(i)) => Some(i64::from(truncate_to_c_int(*i))),
        Some(Value::Undefined) => return Value::Undefined,
        Some(_) => return Value::Error,
    };
    let alen = i64::try_from(s.len()).unwrap_or(i64::MAX);
    if off < 0 {
        off = (alen + off).max(0);
    } else if off >= alen {
        off = alen;
    }
    let n = match len {
        None => alen - off,
        Some(0) => 0,
        Some(l) if l < 0 => (alen - off + l).max(0),
        Some(l) => l.min(alen - off),
    };
    let start = usize::try_from(off).unwrap_or(0);
    let end = start.saturating_add(usize::try_from(n).unwrap_or(0));
    let bytes = s.as_bytes().get(start..end).unwrap_or(&[]);
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// The low 32 bits as a signed C `int`, as a 64-to-32-bit conversion does.
fn truncate_to_c_int(i: i64) -> i32 {
    i32::from_ne_bytes(u32::try_from(i & 0xFFFF_FFFF).unwrap_or(0).to_ne_bytes())
}

fn size(v: &Value) -> Value {
    let n = match v {
        Value::Undefined => return Value::Undefined,
        Value::String(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Ad(ad) => ad.len(),
        _ => return Value::Error,
    };
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A double to an integer the way x86 C casts do: out of range (or NaN) gives `i64::MIN`.
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn real_to_int(r: f64) -> i64 {
    if r.is_nan() || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r) {
        i64::MIN
    } else {
        r.trunc() as i64
    }
}

/// Longest numeric prefix of `s` after leading whitespace, as `strtod` reads it.
fn parse_real_prefix(s: &str) -> Option<f64> {
    let t = s.trim_start();
    let lower = t.to_ascii_lowercase();
    for (word, value) in [
        ("nan", f64::NAN),
        ("inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
        ("+inf", f64::INFINITY),
    ] {
        if lower.starts_with(word) {
            return Some(value);
        }
    }
    let bytes = t.as_bytes();
    let mut end = 0;
    let mut best = None;
    while end < bytes.len() {
        end += 1;
        if let Some(prefix) = t.get(..end) {
            if let Ok(v) = prefix.parse::<f64>() {
                if !prefix.ends_with(['e', 'E', '+', '-']) && !prefix.contains(['i', 'n', 'I', 'N'])
                {
                    best = Some(v);
                }
            }
        }
    }
    best
}

fn to_int(v: &Value) -> Value {
    match v {
        Value::Integer(_) | Value::Undefined | Value::Error => v.clone(),
        Value::Bool(b) => Value::Integer(i64::from(*b)),
        Value::Real(r) => Value::Integer(real_to_int(*r)),
        Value::String(s) => {
            // strtoll, unless the number goes on as a real ("1.5", "1e3").
            let t = s.trim_start();
            let sign_len = usize::from(t.starts_with(['-', '+']));
            let digits = t
                .get(sign_len..)
                .map_or(0, |r| r.bytes().take_while(u8::is_ascii_digit).count());
            let int_text = t.get(..sign_len + digits).unwrap_or("");
            let continues_as_real = t
                .get(sign_len + digits..)
                .is_some_and(|r| r.starts_with(['.', 'e', 'E']));
            match int_text.parse::<i64>() {
                Ok(i) if !continues_as_real => Value::Integer(i),
                _ => match parse_real_prefix(s) {
                    Some(r) => Value::Integer(real_to_int(r)),
                    None => Value::Error,
                },
            }
        }
        _ => Value::Error,
    }
}

fn to_real(v: &Value) -> Value {
    match v {
        Value::Real(_) | Value::Undefined | Value::Error => v.clone(),
        #[allow(clippy::cast_precision_loss)]
        Value::Integer(i) => Value::Real(*i as f64),
        Value::Bool(b) => Value::Real(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => parse_real_prefix(s).map_or(Value::Error, Value::Real),
        _ => Value::Error,
    }
}

fn rounding(name: &str, v: &Value) -> Value {
    let r = match v {
        // Unlike int(), floor(undefined) is an error in HTCondor.
        Value::Integer(_) | Value::Error => return v.clone(),
        Value::Bool(b) => return Value::Integer(i64::from(*b)),
        Value::Real(r) => *r,
        Value::String(s) => match parse_real_prefix(s) {
            Some(r) => r,
            None => return Value::Error,
        },
        _ => return Value::Error,
    };
    let rounded = match name {
        "floor" => r.floor(),
        "ceiling" => r.ceil(),
        _ => r.round_ties_even(),
    };
    Value::Integer(real_to_int(rounded))
}

fn aggregate(name: &str, v: &Value) -> Value {
    let items = match v {
        Value::Undefined => return Value::Undefined,
        Value::List(items) => items,
        _ => return Value::Error,
    };
    let mut acc: Option<Value> = None;
    let mut count = 0i64;
    let mut any_real = false;
    for item in items {
        match item {
            Value::Undefined => continue,
            Value::Integer(_) | Value::Bool(_) => {}
            Value::Real(_) => any_real = true,
            _ => return Value::Error,
        }
        count += 1;
        acc = Some(match acc {
            None => item.clone(),
            Some(a) => match name {
                "min" | "max" => {
                    let less = operators::strict_binary(BinaryOp::Less, item.clone(), a.clone());
                    if (less == Value::Bool(true)) == (name == "min") {
                        item.clone()
                    } else {
                        a
                    }
                }
                _ => operators::strict_binary(BinaryOp::Add, a, item.clone()),
            },
        });
    }
    let Some(total) = acc else {
        return match name {
            "sum" | "avg" => Value::Integer(0),
            _ => Value::Undefined,
        };
    };
    match name {
        "avg" => match total.as_number().or_else(|| total.as_bool().map(f64::from)) {
            #[allow(clippy::cast_precision_loss)]
            Some(t) => Value::Real(t / count as f64),
            None => total,
        },
        // A single element comes back as it is; a comparison converts to a number.
        "min" | "max" if count == 1 => total,
        "min" | "max" => match total {
            // A list with any real gives a real; a boolean winner counts as 0/1.
            Value::Integer(i) if any_real => {
                #[allow(clippy::cast_precision_loss)]
                let r = i as f64;
                Value::Real(r)
            }
            Value::Bool(b) if any_real => Value::Real(f64::from(u8::from(b))),
            Value::Bool(b) => Value::Integer(i64::from(b)),
            other => other,
        },
        _ => total,
    }
}

fn member(x: &Value, list: &Value, op: BinaryOp) -> Value {
    if list.is_undefined() || (x.is_undefined() && op == BinaryOp::Eq) {
        return Value::Undefined;
    }
    let Value::List(items) = list else {
        return Value::Error;
    };
    if matches!(x, Value::Error | Value::List(_) | Value::Ad(_)) {
        return Value::Error;
    }
    let found = items
        .iter()
        .any(|item| operators::strict_binary(op, x.clone(), item.clone()) == Value::Bool(true));
    Value::Bool(found)
}

fn string_list_member(
    item: &Value,
    list: &Value,
    delims: Option<&Value>,
    ignore_case: bool,
) -> Value {
    if [item, list].into_iter().chain(delims).any(Value::is_error) {
        return Value::Error;
    }
    // HTCondor answers false (not undefined) when the item or the list is undefined.
    let (item, list) = match (item, list) {
        (Value::String(i), Value::String(l)) => (i, l),
        (Value::Undefined, Value::Undefined) => return Value::Undefined,
        (Value::Undefined, Value::String(_)) | (Value::String(_), Value::Undefined) => {
            return Value::Bool(false)
        }
        _ => return Value::Error,
    };
    let delims: &str = match delims {
        None | Some(Value::Undefined) => " ,",
        Some(Value::String(d)) => d,
        Some(_) => return Value::Error,
    };
    let found = list
        .split(|c| delims.contains(c))
        .filter(|s| !s.is_empty())
        .any(|entry| {
            if ignore_case {
                entry.eq_ignore_ascii_case(item)
            } else {
                entry == item
            }
        });
    Value::Bool(found)
}

fn regexp(pattern: &Value, target: &Value, options: Option<&Value>) -> Value {
    let all = [pattern, target].into_iter().chain(options);
    if all.clone().any(Value::is_error) {
        return Value::Error;
    }
    if all.clone().any(Value::is_undefined) {
        return Value::Undefined;
    }
    let (Value::String(p), Value::String(t)) = (pattern, target) else {
        return Value::Error;
    };
    let opts = match options {
        None => "",
        Some(Value::String(o)) => o.as_str(),
        Some(_) => return Value::Error,
    };
    let mut builder = regex::RegexBuilder::new(p);
    builder
        .case_insensitive(opts.contains(['i', 'I']))
        .multi_line(opts.contains(['m', 'M']))
        .dot_matches_new_line(opts.contains(['s', 'S']))
        .ignore_whitespace(opts.contains(['x', 'X']))
        .size_limit(1 << 20);
    match builder.build() {
        Ok(re) => Value::Bool(re.is_match(t)),
        Err(_) => Value::Error,
    }
}

fn strcmp(a: &Value, b: &Value, ignore_case: bool) -> Value {
    if a.is_undefined() || b.is_undefined() {
        return Value::Undefined;
    }
    let (Ok(a), Ok(b)) = (to_text(a), to_text(b)) else {
        return Value::Error;
    };
    let ord = if ignore_case {
        a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase())
    } else {
        a.cmp(&b)
    };
    Value::Integer(match ord {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    })
}

fn pow(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Error, _) | (_, Value::Error) => Value::Error,
        (Value::Undefined, _) | (_, Value::Undefined) => Value::Undefined,
        (Value::Integer(x), Value::Integer(y)) if *y >= 0 => {
            Value::Integer(x.wrapping_pow(u32::try_from(*y).unwrap_or(u32::MAX)))
        }
        _ => match (a.as_number(), b.as_number()) {
            (Some(x), Some(y)) => Value::Real(x.powf(y)),
            _ => Value::Error,
        },
    }
}

fn join(sep: &Value, rest: &[Value]) -> Value {
    let sep = match to_text(sep) {
        Ok(s) => s,
        Err(v) => return v,
    };
    let items: &[Value] = match rest {
        [Value::List(items)] => items,
        _ => rest,
    };
    let mut parts = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Undefined => continue,
            other => match to_text(other) {
                Ok(s) => parts.push(s),
                Err(v) => return v,
            },
        }
    }
    Value::String(parts.join(&sep))
}
