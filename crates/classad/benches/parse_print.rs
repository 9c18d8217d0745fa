//! Benchmark: parse + print (hook format) of a 100-attribute job ad, ours against HTCondor's
//! own library (htcondor 24.0 Python bindings: `parseOne(text, Parser.Old).printOld()`) in the
//! same run. Run: `cargo bench -p classad --bench parse_print`. Results: docs/PERFORMANCE.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use classad::print::ad_to_hook_string;
use classad::{eval, parse_old_ad};

/// A real job ad (HTCondor-made fixture) topped up with varied attributes to 100.
fn job_ad_100() -> String {
    let base = include_str!("../tests/data/ads/21-functions.ad");
    let mut text = base.to_owned();
    let mut n = base.lines().count();
    let mut i = 0;
    while n < 100 {
        let line = match i % 5 {
            0 => format!("ExtraInt{i} = {}\n", i * 7919),
            1 => format!("ExtraReal{i} = {}.25\n", i),
            2 => format!("ExtraString{i} = \"/home/user/run{i}/output with space.txt\"\n"),
            3 => {
                format!("ExtraExpr{i} = (RequestMemory * {i}) > 1024 && ExtraInt0 =!= undefined\n")
            }
            _ => format!("ExtraList{i} = {{ \"a\",\"b\",{i} }}\n"),
        };
        text.push_str(&line);
        n += 1;
        i += 1;
    }
    text
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time of one call, from batches of `per_batch` calls.
fn time_ours(text: &str, per_batch: u32) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..31 {
        let start = Instant::now();
        for _ in 0..per_batch {
            let ad = parse_old_ad(black_box(text)).unwrap();
            black_box(ad_to_hook_string(&ad).unwrap());
        }
        samples.push(start.elapsed() / per_batch);
    }
    median(samples)
}

fn time_htcondor(text: &str) -> Option<Duration> {
    let script = r#"
import os, sys, timeit
os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
import classad
text = sys.stdin.read()
f = lambda: classad.parseOne(text, classad.Parser.Old).printOld()
assert len(classad.parseOne(text, classad.Parser.Old)) == 100
runs = sorted(timeit.repeat(f, number=200, repeat=31))
print(runs[len(runs) // 2] / 200)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

fn main() {
    let text = job_ad_100();
    let ad = parse_old_ad(&text).unwrap();
    assert_eq!(ad.len(), 100);
    // Warm up, and evaluate the sizing expression once so the bench covers a real ad.
    let _ = eval::evaluate_attr(&ad, "RequestMemory");
    let _ = time_ours(&text, 100);
    let ours = time_ours(&text, 500);
    let theirs = time_htcondor(&text);
    println!("| operation (100-attribute job ad) | vm-capsule `classad` | HTCondor 24.0 `classad` (Python bindings) | ratio |");
    println!("|---|---|---|---|");
    match theirs {
        Some(t) => println!(
            "| parse + print (hook format) | {:.1} µs | {:.1} µs | {:.2}× |",
            ours.as_secs_f64() * 1e6,
            t.as_secs_f64() * 1e6,
            t.as_secs_f64() / ours.as_secs_f64()
        ),
        None => println!(
            "| parse + print (hook format) | {:.1} µs | (htcondor wheel not installed) | - |",
            ours.as_secs_f64() * 1e6
        ),
    }
    println!(
        "\nbudget: 1 ms; ours uses {:.1}% of it",
        ours.as_secs_f64() * 1e3 * 100.0
    );
}
