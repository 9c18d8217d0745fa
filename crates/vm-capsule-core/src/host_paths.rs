//! A job that needs read-only host paths (`+VMCapsuleHostPaths = "/cvmfs"`) matches only
//! execute nodes whose probe offers every one of them.
//!
//! The route is picked before any slot is matched, and the VM universe's routed ad does not
//! keep the user's `Requirements`, so translate writes the clause itself, in both flavours:
//! `stringListMember("/cvmfs", TARGET.VMCapsuleHostPaths)` for each path.

use classad::{ClassAd, Expr, Value};

use capsule_manifest::node::{check_host_path, MAX_HOST_PATHS};

/// The job attribute naming the host paths a job needs; the machine attribute the probe
/// advertises has the same name.
pub const ATTR: &str = "VMCapsuleHostPaths";

/// The host paths the job `original` says it needs (none when it says nothing).
///
/// # Errors
/// What is wrong with the attribute, for a hold reason.
pub fn wanted(original: &ClassAd) -> Result<Vec<String>, String> {
    let text = match classad::eval::evaluate_attr(original, ATTR) {
        Value::Undefined => return Ok(Vec::new()),
        Value::String(s) => s,
        other => {
            return Err(format!(
                "{ATTR} is {other:?}, not a string; write it as +{ATTR} = \"/cvmfs\" (a comma-separated list of absolute paths)"
            ))
        }
    };
    let mut paths: Vec<String> = Vec::new();
    for entry in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
    {
        check_host_path(entry).map_err(|why| {
            format!("{ATTR} names {entry:?}, which is refused: {why}; list absolute, normalised paths such as /cvmfs")
        })?;
        if !paths.iter().any(|p| p == entry) {
            paths.push(entry.to_owned());
        }
        if paths.len() > MAX_HOST_PATHS {
            return Err(format!("{ATTR} names more than {MAX_HOST_PATHS} paths"));
        }
    }
    Ok(paths)
}

/// Add to `routed`'s `Requirements` a clause for each host path `original` needs.
///
/// # Errors
/// As [`wanted`].
pub fn require(routed: &mut ClassAd, original: &ClassAd) -> Result<(), String> {
    let paths = wanted(original)?;
    if paths.is_empty() {
        return Ok(());
    }
    let clause = paths
        .iter()
        .map(|p| format!("stringListMember(\"{p}\", TARGET.{ATTR})"))
        .collect::<Vec<_>>()
        .join(" && ");
    let text = match routed.get("Requirements") {
        Some(req) => format!(
            "({}) && {clause}",
            classad::print::expr_to_string(req, classad::Syntax::New)
        ),
        None => clause,
    };
    let expr = classad::parse_expr(&text, classad::Syntax::New)
        .map_err(|e| format!("{ATTR}: cannot write the requirement {text:?}: {e}"))?;
    routed.insert("Requirements", expr);
    routed.insert(ATTR, Expr::string(paths.join(",")));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    #[test]
    fn a_job_needing_host_paths_matches_only_nodes_that_offer_them() {
        let original = ad("VMCapsuleHostPaths = \"/cvmfs, /etc/grid-security/certificates\"\n");
        let mut routed = ad("Requirements = TARGET.HasVMCapsuleQemu =?= true\n");
        require(&mut routed, &original).unwrap();
        // A node stands in as a record named TARGET, which the evaluator resolves.
        let on = |node: &str| {
            let mut ad = routed.clone();
            ad.insert(
                "TARGET",
                classad::parse_expr(node, classad::Syntax::New).unwrap(),
            );
            classad::eval::evaluate_attr(&ad, "Requirements")
        };
        let both = r#"[HasVMCapsuleQemu = true; VMCapsuleHostPaths = "/cvmfs,/etc/grid-security/certificates"]"#;
        assert_eq!(on(both), Value::Bool(true));
        let one = r#"[HasVMCapsuleQemu = true; VMCapsuleHostPaths = "/cvmfs"]"#;
        assert_eq!(on(one), Value::Bool(false));
        assert_eq!(on("[HasVMCapsuleQemu = true]"), Value::Bool(false));
    }

    #[test]
    fn no_attribute_changes_nothing_and_a_bad_one_is_the_jobs_problem() {
        let mut routed = ad("Requirements = true\n");
        require(&mut routed, &ad("Owner = \"a\"\n")).unwrap();
        assert!(!routed.contains(ATTR));
        for bad in [
            "VMCapsuleHostPaths = 3\n",
            "VMCapsuleHostPaths = \"cvmfs\"\n",
            "VMCapsuleHostPaths = \"/a/../b\"\n",
        ] {
            let e = require(&mut routed, &ad(bad)).unwrap_err();
            assert!(e.starts_with("VMCapsuleHostPaths"), "{e}");
        }
    }
}
