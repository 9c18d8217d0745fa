//! The crates are laid out by where their code runs, and only the imports the design allows
//! exist: the execute side never needs the submit side, and the shared core needs neither.
//! The compiler enforces the rule through each crate's dependencies; this test keeps those
//! dependencies from growing back.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every workspace crate with the workspace crates it depends on (normal dependencies).
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn each_area_imports_only_what_the_design_allows() {
    let deps = workspace_dependencies();
    let allowed: &[(&str, &[&str])] = &[
        ("classad", &[]),
        ("capsule-disk", &["capsule-manifest"]),
        ("capsule-manifest", &[]),
        ("capsule-guest", &["capsule-disk", "capsule-manifest"]),
        (
            "vm-capsule-core",
            &["classad", "capsule-disk", "capsule-manifest"],
        ),
        (
            "vm-capsule-submit",
            &[
                "vm-capsule-core",
                "classad",
                "capsule-disk",
                "capsule-manifest",
            ],
        ),
        (
            "vm-capsule-execute",
            &[
                "vm-capsule-core",
                "classad",
                "capsule-disk",
                "capsule-manifest",
            ],
        ),
        (
            "vm-capsule-admin",
            &[
                "vm-capsule-core",
                "vm-capsule-submit",
                "vm-capsule-execute",
                "classad",
                "capsule-disk",
                "capsule-manifest",
            ],
        ),
    ];
    for (krate, may) in allowed {
        let have = deps
            .get(*krate)
            .unwrap_or_else(|| panic!("no crate {krate} in the workspace"));
        let extra: Vec<&String> = have.iter().filter(|d| !may.contains(&d.as_str())).collect();
        assert!(
            extra.is_empty(),
            "{krate} depends on {extra:?}, which the layout in docs/DESIGN.md does not allow"
        );
    }
    // A new crate must take its place in the picture before it lands.
    let known: BTreeSet<&str> = allowed
        .iter()
        .map(|(k, _)| *k)
        .chain(["vm-capsule"])
        .collect();
    for krate in deps.keys() {
        assert!(
            known.contains(krate.as_str()),
            "crate {krate} is not in the layout of docs/DESIGN.md: add it there and here"
        );
    }
}
