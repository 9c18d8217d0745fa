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

/// Calls that read the process's environment (`env::var` also covers `var_os`, `vars` and
/// `vars_os`); an import of `std::env` would hide them behind a bare name.
const ENVIRONMENT_READS: &[&str] = &[
    "env::var",
    "env::current_exe",
    "env::current_dir",
    "env::temp_dir",
    "env::home_dir",
    "use std::env",
];

/// The lines of `text` outside `#[cfg(test)]` items, with their line numbers. The code is
/// rustfmt'd: an item ends at its own line (`mod tests;`) or at the first `}` back at its
/// indentation.
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push((n + 1, line));
            continue;
        }
        // Skip further attributes, then the item itself.
        let Some((_, item)) = lines.find(|(_, l)| !l.trim_start().starts_with("#[")) else {
            break;
        };
        if item.trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{}}}", &item[..item.len() - item.trim_start().len()]);
        if !item.trim_end().ends_with('}') {
            let _ = lines.find(|(_, l)| l.starts_with(&close));
        }
    }
    out
}

#[test]
fn no_library_crate_reads_the_environment() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let mut found = Vec::new();
    let mut files = 0;
    for krate in [
        "vm-capsule-core",
        "vm-capsule-submit",
        "vm-capsule-execute",
        "vm-capsule-admin",
    ] {
        let mut dirs = vec![crates.join(krate).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = path.file_name().unwrap().to_str().unwrap();
                if !name.ends_with(".rs") || name == "tests.rs" {
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in non_test_lines(&text) {
                    let code = line.trim_start();
                    if code.starts_with("//") {
                        continue;
                    }
                    if ENVIRONMENT_READS.iter().any(|r| code.contains(r)) {
                        found.push(format!("{}:{n}: {}", path.display(), code));
                    }
                }
            }
        }
    }
    assert!(
        files > 50,
        "only {files} source files found under {crates:?}"
    );
    assert!(
        found.is_empty(),
        "the library crates read the environment; the binary reads it once into vm_capsule_core::environment::Environment and passes down what is needed:\n{}",
        found.join("\n")
    );
}

#[test]
fn test_items_are_told_apart_from_code() {
    let text = "fn a() { env::var(\"A\") }\n#[cfg(test)]\nmod tests;\nfn b() {}\n#[cfg(test)]\n#[allow(x)]\nfn t() {\n    env::var(\"T\");\n}\nfn c() {}\n    #[cfg(test)]\n    mod tests {\n        fn x() {\n        }\n    }\n    fn d() {}\n";
    let kept: Vec<&str> = non_test_lines(text).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        kept,
        [
            "fn a() { env::var(\"A\") }",
            "fn b() {}",
            "fn c() {}",
            "    fn d() {}"
        ]
    );
}
