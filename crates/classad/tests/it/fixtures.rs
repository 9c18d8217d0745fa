//! Job ads made by HTCondor itself (tests/data/ads, from tests/data/submit via
//! make_fixtures.py), read and printed by us and compared with HTCondor.

use std::path::PathBuf;

use classad::print::{ad_to_hook_string, ad_to_new_string, ad_to_old_string};
use classad::{eval, parse_old_ad, parse_old_line};

use crate::oracle;

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ads");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ad"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 30,
        "expected at least 30 fixture ads, found {}",
        out.len()
    );
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn old_format_equals_htcondor_print_old() {
    for (name, text) in fixtures() {
        let ad = parse_old_ad(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = sorted(lines(&ad_to_old_string(&ad).unwrap()));
        // The fixture is HTCondor's printOld() output; HTCondor re-printing it agrees too.
        assert_eq!(
            ours,
            sorted(lines(&text)),
            "{name}: differs from the fixture"
        );
        assert_eq!(
            ours,
            sorted(oracle::print_old(&text)),
            "{name}: differs from HTCondor"
        );
    }
}

#[test]
fn new_format_parses_in_htcondor_to_the_same_ad() {
    for (name, text) in fixtures() {
        let ad = parse_old_ad(&text).unwrap();
        let new_text = ad_to_new_string(&ad);
        let theirs = sorted(oracle::new_to_old(&new_text));
        assert_eq!(
            theirs,
            sorted(lines(&text)),
            "{name}: new syntax did not round-trip"
        );
        // And we read our own new syntax back to the same ad.
        assert_eq!(classad::parse_new_ad(&new_text).unwrap(), ad, "{name}");
    }
}

#[test]
fn every_hook_line_parses_alone_in_htcondor() {
    for (name, text) in fixtures() {
        let ad = parse_old_ad(&text).unwrap();
        let hook = ad_to_hook_string(&ad).unwrap();
        let hook_lines = lines(&hook);
        assert_eq!(hook_lines.len(), ad.len(), "{name}");
        let mut names: Vec<&str> = Vec::new();
        for line in &hook_lines {
            let theirs = oracle::parse_line(line)
                .unwrap_or_else(|| panic!("{name}: HTCondor rejects hook line {line:?}"));
            assert_eq!(
                theirs,
                vec![line.clone()],
                "{name}: line changes when HTCondor reads it"
            );
            let (attr, _) = parse_old_line(line).unwrap();
            names.push(line.split(" = ").next().unwrap());
            assert!(ad.contains(&attr));
        }
        let mut byte_sorted = names.clone();
        byte_sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(
            names, byte_sorted,
            "{name}: hook output is not sorted byte-wise"
        );
    }
}

#[test]
fn every_attribute_evaluates_as_in_htcondor() {
    let mut checked = 0;
    for (name, text) in fixtures() {
        let ad = parse_old_ad(&text).unwrap();
        for (attr, _) in ad.iter() {
            let ours = eval::evaluate_attr(&ad, attr);
            let Some(theirs) = oracle::eval(attr, &text) else {
                panic!("{name}: HTCondor could not evaluate {attr}");
            };
            assert!(
                oracle::same_value(&ours, &theirs),
                "{name}: {attr} evaluates to {ours:?}, HTCondor says {theirs:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} attributes checked");
}
