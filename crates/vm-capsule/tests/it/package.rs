//! What the package gives an admin lines up with what the docs tell them: the template goes
//! where the package expects it and needs one knob, the documented test-guest template boots,
//! the guides are installed, and doctor notices an HTCondor that does not read the package's
//! configuration file.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use classad::eval::string_attr;

use crate::cmd::run_ok;
use crate::ops::{job, kvm_template, Tarball};
use crate::router::{bin, installed_root, repo, Pool};

#[test]
fn a_templates_classad_template_is_read_without_a_knob() {
    // What `template build` makes: classad-template.ad beside condor_vm_capsule/.
    let pool = Pool::new(&kvm_template);
    let root = PathBuf::from(
        pool.env
            .iter()
            .find(|(k, _)| k == "_CONDOR_VM_CAPSULE_TEMPLATE")
            .unwrap()
            .1
            .clone(),
    );
    assert!(!pool
        .env
        .iter()
        .any(|(k, _)| k == "_CONDOR_VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE"));
    fs::write(
        root.join("classad-template.ad"),
        "JobVMType = \"kvm\"\nVMPARAM_Marker = \"from the template\"\n",
    )
    .unwrap();
    let ad = job(pool.root.path(), "classad-template", "", 911);
    let routed = pool.translate(&ad).unwrap();
    assert_eq!(
        string_attr(&routed, "VMPARAM_Marker").as_deref(),
        Some("from the template")
    );
}

/// The commands of the first `sh` block after `marker` in `doc`.
fn documented_commands(doc: &str, marker: &str) -> String {
    let text = fs::read_to_string(repo().join(doc)).unwrap();
    let after = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in {doc}"))..];
    let block = &after[after.find("```sh\n").unwrap() + 6..];
    block[..block.find("```").unwrap()].to_owned()
}

#[test]
fn the_documented_test_guest_template_boots() {
    let t = tempfile::tempdir().unwrap();
    let template = t.path().join("template");
    let commands = documented_commands("docs/TEMPLATES.md", "<!-- test guest template -->")
        .replace(
            "/var/lib/vm-capsule/template",
            &template.display().to_string(),
        )
        .replace(
            "/usr/libexec/vm-capsule/vm-capsule",
            &bin("vm-capsule").display().to_string(),
        );
    // The packaged agent beside vm-capsule is what the template check ships (its default).
    assert!(bin("capsule-init").exists());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &commands])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{commands}\n{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: GOOD"), "{stdout}\n{stderr}");
    assert!(template.join("condor_vm_capsule/data.qcow2").is_file());
}

#[test]
fn the_guides_are_installed_with_the_package() {
    let Some(root) = installed_root() else {
        // Not testing a package: what scripts/dist.sh stages is checked there against both
        // packages; here, that it stages every guide the README and ADMIN.md point to.
        let dist = fs::read_to_string(repo().join("scripts/dist.sh")).unwrap();
        let spec = fs::read_to_string(repo().join("packaging/vm-capsule.spec")).unwrap();
        for doc in ["README.md", "ADMIN.md", "TEMPLATES.md"] {
            assert!(dist.contains(doc) && spec.contains(doc), "{doc}");
        }
        return;
    };
    for (doc, src) in [
        ("README.md", "README.md"),
        ("ADMIN.md", "docs/ADMIN.md"),
        ("TEMPLATES.md", "docs/TEMPLATES.md"),
    ] {
        assert_eq!(
            fs::read_to_string(root.join("usr/share/doc/vm-capsule").join(doc)).unwrap(),
            fs::read_to_string(repo().join(src)).unwrap(),
            "{doc}"
        );
    }
}

#[test]
fn doctor_says_when_htcondor_does_not_read_the_package_configuration() {
    let t = tempfile::tempdir().unwrap();
    let config_d = t.path().join("etc-condor/config.d");
    fs::create_dir_all(&config_d).unwrap();
    run_ok(
        Command::new(bin("vm-capsule"))
            .arg("install-hooks")
            .arg(t.path().join("hooks"))
            .arg("--config-file")
            .arg(config_d.join("50-vm-capsule.conf")),
    );
    let package = config_d.join("50-vm-capsule.conf");
    let doctor = |tarball: &Tarball| {
        let out = Command::new(bin("vm-capsule"))
            .args(["doctor", "--json", "--package-config"])
            .arg(&package)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CONDOR_CONFIG", &tarball.config)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut found: Vec<serde_json::Value> = json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "package configuration")
            .cloned()
            .collect();
        assert_eq!(found.len(), 2, "one per side: {json:#}");
        (out.status.code(), found.remove(0))
    };
    // A tarball HTCondor whose configuration names no LOCAL_CONFIG_DIR.
    let bare = Tarball::new(&t.path().join("bare"), "");
    let (code, f) = doctor(&bare);
    assert_eq!(code, Some(1));
    assert_eq!(f["status"], "fail", "{f:#}");
    assert!(
        f["detail"].as_str().unwrap().contains("is not read"),
        "{f:#}"
    );
    assert!(
        f["fix"].as_str().unwrap().contains(&format!(
            "LOCAL_CONFIG_DIR = $(LOCAL_CONFIG_DIR) {}",
            config_d.display()
        )),
        "{f:#}"
    );
    // The fix applied.
    let fixed = Tarball::new(
        &t.path().join("fixed"),
        &format!("LOCAL_CONFIG_DIR = {}\n", config_d.display()),
    );
    let (_, f) = doctor(&fixed);
    assert_eq!(f["status"], "ok", "{f:#}");
    assert!(f["detail"].as_str().unwrap().contains("is read"), "{f:#}");
}
