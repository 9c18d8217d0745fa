//! `evaluate_match`: an expression over a slot ad (MY) and a job ad (TARGET), as the starter
//! evaluates `SINGULARITY_JOB`, compared with HTCondor's own `MatchClassAd`.

use classad::eval::{evaluate_match, match_is_true};
use classad::{parse_expr, parse_old_ad, Syntax, Value};
use serde_json::json;

use crate::oracle::ask;

const SLOT: &str = "Name = \"slot1@node\"\nMemory = 2048\nCpus = 2\nVMCapsuleJob = TARGET.WantVM =?= true\nOwnerOnly = \"bob\"\n";
const JOB: &str = "Owner = \"alice\"\nRequestMemory = 100\nWantVM = true\nBig = RequestMemory * 100\nLoop = Loop + 1\nMine = Memory\n";

/// Each expression is true against the job exactly when HTCondor's match says so.
#[test]
fn match_evaluation_agrees_with_htcondor() {
    let my = parse_old_ad(SLOT).unwrap();
    let target = parse_old_ad(JOB).unwrap();
    let cases = [
        "true",
        "false",
        "undefined",
        "TARGET.Owner =!= \"trusted\"",
        "TARGET.Owner == \"alice\"",
        "TARGET.WantVM =?= true",
        "TARGET.WantVM",
        "TARGET.Missing =?= true",
        "TARGET.Missing",
        "Owner == \"alice\"",
        "RequestMemory < Memory",
        "MY.Owner == \"alice\"",
        "TARGET.Memory == 2048",
        "TARGET.Big > Memory",
        "TARGET.Mine == 2048",
        "TARGET.Loop > 0",
        "OwnerOnly == TARGET.Owner",
        "MY.VMCapsuleJob",
        "VMCapsuleJob && TARGET.RequestMemory <= MY.Memory",
        "foo(1)",
        "1",
        "0",
        "2.5",
        "\"yes\"",
        "TARGET.Owner =!= \"alice\" || TARGET.RequestMemory > 4096",
    ];
    for case in cases {
        let expr = parse_expr(case, Syntax::Old).unwrap();
        let ours = match_is_true(&expr, &my, &target);
        let answer = ask(&json!({"op": "match", "my": SLOT, "target": JOB, "expr": case}));
        let theirs = answer["value"]["v"].as_bool();
        assert_eq!(
            Some(ours),
            theirs,
            "{case}: ours {ours}, HTCondor's {answer}"
        );
    }
}

/// `TARGET.x` is the job's; a name the slot lacks is found in the job, not the other way round
/// when the slot has it.
#[test]
fn target_and_alternate_scope() {
    let my = parse_old_ad(SLOT).unwrap();
    let target = parse_old_ad(JOB).unwrap();
    let eval = |s: &str| evaluate_match(&parse_expr(s, Syntax::Old).unwrap(), &my, &target);
    assert_eq!(eval("TARGET.RequestMemory"), Value::Integer(100));
    assert_eq!(eval("Owner"), Value::String("alice".into()));
    assert_eq!(eval("Memory"), Value::Integer(2048));
    assert_eq!(eval("TARGET.Mine"), Value::Integer(2048));
    assert_eq!(eval("TARGET.Loop"), Value::Error);
    assert_eq!(eval("TARGET.Nothing"), Value::Undefined);
}
