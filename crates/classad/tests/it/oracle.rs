//! A long-lived `python3 tests/oracle.py` process (HTCondor 24.0's ClassAd library) shared by
//! all tests. It is required: a missing `htcondor` wheel fails the tests with the fix.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use classad::Value;
use serde_json::{json, Value as Json};

pub struct Oracle {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

static ORACLE: OnceLock<Mutex<Oracle>> = OnceLock::new();

fn start() -> Oracle {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("CONDOR_CONFIG", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the ClassAd oracle tests");
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut oracle = Oracle {
        _child: child,
        stdin,
        stdout,
    };
    let probe = oracle.request(&json!({"op": "expr_old", "expr": "1"}));
    assert!(
        probe.get("ok") == Some(&Json::Bool(true)),
        "HTCondor's ClassAd library is not usable from python3 ({probe}); install it with: pip install 'htcondor==24.0.*'"
    );
    oracle
}

impl Oracle {
    fn request(&mut self, req: &Json) -> Json {
        let mut line = req.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).expect("oracle stdin");
        self.stdin.flush().expect("oracle flush");
        let mut answer = String::new();
        let n = self.stdout.read_line(&mut answer).expect("oracle stdout");
        assert!(
            n > 0,
            "the HTCondor oracle process died (it crashes on some inputs) after request {req}"
        );
        serde_json::from_str(&answer).expect("oracle answer is JSON")
    }
}

/// Send one request to the shared oracle.
pub fn ask(req: &Json) -> Json {
    let lock = ORACLE.get_or_init(|| Mutex::new(start()));
    let mut oracle = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    oracle.request(req)
}

/// The `lines` of an answer, or `None` when HTCondor refused the input.
pub fn lines(answer: &Json) -> Option<Vec<String>> {
    if answer.get("ok") != Some(&Json::Bool(true)) {
        return None;
    }
    Some(
        answer["lines"]
            .as_array()?
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect(),
    )
}

/// HTCondor's `printOld()` lines for old-syntax ad text.
pub fn print_old(text: &str) -> Vec<String> {
    let answer = ask(&json!({"op": "print_old", "text": text}));
    lines(&answer).unwrap_or_else(|| panic!("HTCondor could not parse the ad: {answer}\n{text}"))
}

/// HTCondor's `printOld()` lines for a new-syntax ad.
pub fn new_to_old(text: &str) -> Vec<String> {
    let answer = ask(&json!({"op": "new_to_old", "text": text}));
    lines(&answer)
        .unwrap_or_else(|| panic!("HTCondor could not parse the new ad: {answer}\n{text}"))
}

/// HTCondor's parse of one hook line on its own; `None` if it rejects it.
pub fn parse_line(line: &str) -> Option<Vec<String>> {
    lines(&ask(&json!({"op": "parse_line", "line": line})))
}

/// HTCondor's `printOld` line for `x = <expr>` parsed in the given syntax; `None` on error.
pub fn expr_old(expr: &str, old: bool) -> Option<String> {
    lines(&ask(&json!({"op": "expr_old", "expr": expr, "old": old})))
        .and_then(|l| l.into_iter().next())
}

/// HTCondor's value of `expr` (new syntax) in the scope of an old-syntax ad.
pub fn eval(expr: &str, ad_text: &str) -> Option<Value> {
    let answer = ask(&json!({"op": "eval", "expr": expr, "ad": ad_text}));
    if answer.get("ok") != Some(&Json::Bool(true)) {
        return None;
    }
    value_from_json(&answer["value"])
}

fn value_from_json(v: &Json) -> Option<Value> {
    Some(match v["t"].as_str()? {
        "bool" => Value::Bool(v["v"].as_bool()?),
        "int" => Value::Integer(v["v"].as_str()?.parse().ok()?),
        "real" => Value::Real(match v["v"].as_str()? {
            "nan" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            s => s.parse().ok()?,
        }),
        "str" => Value::String(v["v"].as_str()?.to_owned()),
        "undefined" => Value::Undefined,
        "error" => Value::Error,
        "list" => Value::List(
            v["v"]
                .as_array()?
                .iter()
                .map(value_from_json)
                .collect::<Option<Vec<_>>>()?,
        ),
        // Nested ads are compared by their attributes elsewhere; mark them opaquely.
        "ad" => Value::Ad(Box::default()),
        _ => return None,
    })
}

/// Values equal as HTCondor means them (NaN equals NaN; reals within rounding of `pow`).
pub fn same_value(ours: &Value, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Value::Real(a), Value::Real(b)) => {
            (a.is_nan() && b.is_nan()) || a == b || ((a - b).abs() <= 1e-12 * a.abs().max(b.abs()))
        }
        (Value::List(a), Value::List(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
        }
        (Value::Ad(_), Value::Ad(_)) => true,
        _ => ours == theirs,
    }
}
