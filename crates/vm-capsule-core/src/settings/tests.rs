#![allow(clippy::unwrap_used)]
use std::path::Path;

use super::knobs::{self as k, DefaultValue};
use super::*;

#[test]
fn htcondor_syntax_subset_and_condor_overrides() {
    let text = "# comment\nLOCAL_DIR = /var/lib/condor\nVM_CAPSULE_TEMPLATE = $(LOCAL_DIR)/vmt\nvm_capsule_scratch_dir_prefix = \\\n   /scratch\nVM_CAPSULE_BOGUS = 1\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.conf");
    std::fs::write(&path, text).unwrap();
    let env = crate::environment::Environment {
        vars: vec![(
            "_CONDOR_VM_CAPSULE_EXIT_LOG".to_owned(),
            "/log/exit".to_owned(),
        )],
        ..Default::default()
    };
    let settings = Settings::load(Some(&path), &env).unwrap();
    let translate = settings.translate().unwrap();
    assert_eq!(translate.template_root, Path::new("/var/lib/condor/vmt"));
    assert_eq!(translate.scratch_prefix, Path::new("/scratch"));
    assert_eq!(
        settings.hook_log(WhichLog::Exit).0.base,
        Path::new("/log/exit")
    );
    assert_eq!(settings.warnings.len(), 1);
    assert!(settings.warnings[0].contains("VM_CAPSULE_BOGUS"));
}

#[test]
fn every_default_in_the_table_is_a_valid_value_of_its_kind() {
    let unset = Settings::default();
    for knob in KNOBS {
        unset.check(knob).unwrap();
        let numeric = matches!(
            knob.kind,
            Kind::Bytes | Kind::Mib | Kind::Seconds | Kind::Count
        );
        if numeric && matches!(knob.default, DefaultValue::Value(_)) {
            assert!(knob.default_number().is_some(), "{}", knob.name);
        }
        assert!(knob.name.starts_with("VM_CAPSULE_"), "{}", knob.name);
        assert_eq!(k::find(knob.name), Some(knob), "{} listed twice", knob.name);
    }
    assert_eq!(
        k::BOOT_TIMEOUT.default_number(),
        Some(crate::routed::BOOT_MARGIN_SECS)
    );
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let s = Settings::from_pairs([(k::TEMPLATE.name, "/t")])
        .with_exe(Some("/opt/vmc/vm-capsule".into()));
    let t = s.translate().unwrap();
    assert_eq!(t.scratch_prefix, Path::new("/tmp/vm-capsule"));
    assert_eq!(t.max_data_disk_mib, 64 * 1024);
    assert_eq!(
        t.init_path.as_deref(),
        Some(Path::new("/opt/vmc/capsule-init"))
    );
    assert_eq!(t.launcher_path, Path::new("/opt/vmc/vm-capsule"));
    assert_eq!((t.headroom_mib, t.default_memory_mib), (256, 512));
    assert_eq!(
        (t.job_user.as_str(), t.label.as_str()),
        ("condor", "CONDORDATA")
    );
    assert_eq!(t.wall_time_limit_secs, None);
    assert_eq!((t.hook_timeout_secs, t.keep_failed), (3600, 10));
    assert!(!t.test_any_user);
    let f = s.finalize().unwrap();
    assert_eq!(f.max_disk_bytes, 64 << 30);
    assert_eq!(s.cleanup().unwrap().keep_failed, 10);
    assert_eq!(s.run().unwrap().tcg_tb_mib, 64);
    let l = s.libvirt_xml().unwrap();
    assert_eq!((l.domain_type, l.other_jobs), ("auto", "refuse"));
    let (log, problems) = s.hook_log(WhichLog::Translate);
    assert_eq!(log.base, Path::new("/var/log/vm-capsule/TranslateLog"));
    assert_eq!((log.max_bytes, log.debug), (10 << 20, false));
    assert!(problems.is_empty());
}

#[test]
fn a_bad_value_names_the_knob_the_value_and_what_is_expected() {
    let s = Settings::from_pairs([(k::TEMPLATE.name, "/t"), (k::VM_MEMORY_MB.name, "lots")]);
    assert_eq!(
        s.translate().unwrap_err().to_string(),
        "VM_CAPSULE_VM_MEMORY_MB = \"lots\" is not a whole number of MiB; fix it in the HTCondor configuration (docs/ADMIN.md lists every knob)"
    );
    let s = Settings::from_pairs([(k::AGENT_START.name, "systemd")]);
    assert!(s
        .check(&k::AGENT_START)
        .unwrap_err()
        .to_string()
        .starts_with("VM_CAPSULE_AGENT_START = \"systemd\" is not image or cloud-init;"));
    let s = Settings::from_pairs([
        (k::LIBVIRT_DOMAIN_TYPE.name, "TCG"),
        (k::AGENT_START.name, "CloudInit"),
    ]);
    assert_eq!(s.libvirt_xml().unwrap().domain_type, "qemu");
    let s = Settings::from_pairs([(k::NODE_IMAGE_DIR.name, "images")]);
    assert!(s
        .check(&k::NODE_IMAGE_DIR)
        .unwrap_err()
        .to_string()
        .contains("an absolute path"));
    let s = Settings::from_pairs([(k::TCG_TB_MIB.name, "-1")]);
    assert!(s
        .run()
        .unwrap_err()
        .to_string()
        .contains("VM_CAPSULE_TCG_TB_MIB = \"-1\""));
}

#[test]
fn test_any_user_has_one_policy_in_every_hook() {
    let s = Settings::from_pairs([(k::TEMPLATE.name, "/t"), (k::TEST_ANY_USER.name, "maybe")]);
    for err in [
        s.translate().map(|_| ()).unwrap_err(),
        s.finalize().map(|_| ()).unwrap_err(),
        s.cleanup().map(|_| ()).unwrap_err(),
    ] {
        assert!(
            err.to_string()
                .starts_with("VM_CAPSULE_TEST_ANY_USER = \"maybe\" is not true or false"),
            "{err}"
        );
    }
    let s = Settings::from_pairs([(k::TEST_ANY_USER.name, "Yes")]);
    assert!(s.finalize().unwrap().test_any_user && s.cleanup().unwrap().test_any_user);
}

#[test]
fn cleanup_refuses_when_finalize_could_not_run() {
    let s = Settings::from_pairs([(k::MAX_DATA_DISK_MB.name, "big")]);
    assert!(s.finalize().is_err());
    assert!(s
        .cleanup()
        .unwrap_err()
        .to_string()
        .contains("VM_CAPSULE_MAX_DATA_DISK_MB"));
}

#[test]
fn a_bad_log_knob_is_reported_and_the_log_still_opens() {
    let s = Settings::from_pairs([(k::MAX_EXIT_LOG.name, "1M"), (k::DEBUG.name, "on")]);
    let (log, problems) = s.hook_log(WhichLog::Exit);
    assert_eq!(log.max_bytes, 10 << 20);
    assert_eq!(problems.len(), 2);
    assert!(problems[0].to_string().contains("VM_CAPSULE_MAX_EXIT_LOG"));
    assert!(problems[1].to_string().contains("VM_CAPSULE_DEBUG"));
}

#[test]
fn readme_and_admin_carry_the_generated_knob_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let want = docs::markdown();
    for doc in ["README.md", "docs/ADMIN.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        assert_eq!(
            docs::generated_part(&text),
            Some(want.as_str()),
            "{doc}'s knob table differs from the table in settings/knobs.rs: paste `vm-capsule generate --knobs-markdown` over it"
        );
    }
}

#[test]
fn the_man_page_lists_every_knob() {
    let page = docs::man_page("1.0");
    for knob in KNOBS {
        assert!(
            page.contains(&format!(".B {}\n", knob.name.replace('-', "\\-"))),
            "{}",
            knob.name
        );
    }
    assert!(!page
        .lines()
        .any(|l| l.starts_with('.') && l.starts_with(".VM")));
}

#[test]
fn checkpoint_knobs_default_to_off_hourly_and_zero_means_on_eviction_only() {
    let unset = Settings::from_pairs([(k::TEMPLATE.name, "/t")]);
    assert!(!unset.translate().unwrap().checkpoint);
    assert_eq!(
        unset.run().unwrap().checkpoint_interval,
        Some(std::time::Duration::from_secs(3600))
    );
    let set = Settings::from_pairs([
        (k::TEMPLATE.name, "/t"),
        (k::CHECKPOINT.name, "YES"),
        (k::CHECKPOINT_INTERVAL.name, "0"),
    ]);
    assert!(set.translate().unwrap().checkpoint);
    assert_eq!(set.run().unwrap().checkpoint_interval, None);
    let bad = Settings::from_pairs([
        (k::TEMPLATE.name, "/t"),
        (k::CHECKPOINT.name, "always"),
        (k::CHECKPOINT_INTERVAL.name, "1h"),
    ]);
    assert!(bad
        .translate()
        .unwrap_err()
        .to_string()
        .starts_with("VM_CAPSULE_CHECKPOINT = \"always\" is not true or false"));
    assert!(bad
        .run()
        .unwrap_err()
        .to_string()
        .starts_with("VM_CAPSULE_CHECKPOINT_INTERVAL = \"1h\" is not a whole number of seconds"));
}
