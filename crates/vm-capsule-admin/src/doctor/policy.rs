//! The execute side's node policy (`VM_CAPSULE_JOB`): the expression parses, the startd
//! advertises it as `VMCapsuleJob` (the hook reads it from the slot ad), the starter runs our
//! prepare-job hook, and the node's template loads with its OS disks staged.

use std::path::Path;

use super::{ConfigSource, Side};
use crate::snippet::command_for_program;
use vm_capsule_core::settings::{knobs, Settings};
use vm_capsule_core::template::Template;
use vm_capsule_execute::policy::ATTR_POLICY;

const CHECK: &str = "node policy";

/// Check the node policy, when `VM_CAPSULE_JOB` is set.
pub(super) fn check(s: &mut Side<'_>, config: &ConfigSource, settings: &Settings) {
    let expr = match settings.node_policy() {
        Ok(p) => p.expression,
        Err(e) => {
            s.fail(CHECK, e.to_string(), knobs::JOB_UNFIT.kind.expected());
            return;
        }
    };
    let Some(expr) = expr else {
        s.info(
            CHECK,
            format!(
                "not configured ({} is unset): jobs run as they come",
                knobs::JOB.name
            ),
        );
        return;
    };
    if let Err(e) = classad::parse_expr(&expr, classad::Syntax::Old) {
        s.fail(
            CHECK,
            format!(
                "{} = {expr} is not a ClassAd expression: {e}",
                knobs::JOB.name
            ),
            "write an expression over the job, e.g. TARGET.Owner =!= \"trusted\"",
        );
        return;
    }
    let attrs = config.get("STARTD_ATTRS").unwrap_or_default();
    let advertised = attrs
        .split([',', ' '])
        .any(|a| a.eq_ignore_ascii_case(ATTR_POLICY));
    if !advertised || config.get(ATTR_POLICY).is_none_or(|v| v.trim().is_empty()) {
        s.fail(
            CHECK,
            format!("the startd does not advertise {ATTR_POLICY}, which the hook reads from the slot ad: every job runs natively"),
            format!("{ATTR_POLICY} = $({}) and STARTD_ATTRS = $(STARTD_ATTRS) {ATTR_POLICY}", knobs::JOB.name),
        );
    }
    check_hook(s, config);
    check_template(s, settings);
}

/// `STARTER_JOB_HOOK_KEYWORD` and `<keyword>_HOOK_PREPARE_JOB` run `vm-capsule prepare-job`.
fn check_hook(s: &mut Side<'_>, config: &ConfigSource) {
    let fix = "STARTER_JOB_HOOK_KEYWORD = VMCAPSULE and VMCAPSULE_HOOK_PREPARE_JOB = /usr/libexec/vm-capsule/vm-capsule-prepare-job (the link install-hooks makes)";
    let Some(kw) = config
        .get("STARTER_JOB_HOOK_KEYWORD")
        .filter(|k| !k.trim().is_empty())
    else {
        s.fail(CHECK, "STARTER_JOB_HOOK_KEYWORD is not set: the starter runs no prepare-job hook, so every job runs natively", fix);
        return;
    };
    let kw = kw.trim();
    let knob = format!("{kw}_HOOK_PREPARE_JOB");
    let Some(path) = config.get(&knob) else {
        s.fail(CHECK, format!("{knob} is not set"), fix);
        return;
    };
    let path = Path::new(path.trim());
    let args = config.get(&format!("{knob}_ARGS")).unwrap_or_default();
    let runs_ours = command_for_program(path) == Some("prepare-job")
        || args.split_whitespace().next() == Some("prepare-job");
    let executable = std::fs::metadata(path).is_ok_and(|m| {
        m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
    });
    if !runs_ours {
        s.fail(
            CHECK,
            format!(
                "{knob} = {} does not run `vm-capsule prepare-job`",
                path.display()
            ),
            fix,
        );
    } else if !executable {
        s.fail(
            CHECK,
            format!("{knob} = {}: no such program", path.display()),
            fix,
        );
    } else {
        s.ok(
            CHECK,
            format!("the starter runs {} for every job ({knob})", path.display()),
        );
    }
}

/// The template the launcher boots loads here, and its OS disks are staged on this node.
fn check_template(s: &mut Side<'_>, settings: &Settings) {
    let cfg = match settings.translate() {
        Ok(cfg) => cfg,
        Err(e) => {
            s.fail(
                CHECK,
                format!("the node's template: {e}"),
                format!(
                    "set {} to the node's template (a directory holding condor_vm_capsule/)",
                    knobs::TEMPLATE.name
                ),
            );
            return;
        }
    };
    let template = match Template::load(&cfg.template_root, cfg.classad_template.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            s.fail(
                CHECK,
                format!("the node's template does not load: {e}"),
                format!("check {}", knobs::TEMPLATE.name),
            );
            return;
        }
    };
    for disk in &template.os_disks {
        let name = disk
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match vm_capsule_core::node_image::plan(
            cfg.node_image_dir.as_deref(),
            &template,
            disk,
            &format!("{name}.overlay.qcow2"),
        ) {
            Ok(Some(_)) => {}
            Ok(None) => s.fail(
                CHECK,
                format!(
                    "the template's OS disk {name} is not staged: {} is unset",
                    knobs::NODE_IMAGE_DIR.name
                ),
                format!("stage it and set {}", knobs::NODE_IMAGE_DIR.name),
            ),
            Err(e) => s.fail(
                CHECK,
                format!("the template's OS disk {name}: {e}"),
                format!("stage it in {}", knobs::NODE_IMAGE_DIR.name),
            ),
        }
    }
    s.ok(
        CHECK,
        format!(
            "the node's template {} loads ({} OS disk(s){})",
            template.dir.display(),
            template.os_disks.len(),
            if template.boot.is_some() {
                ", direct kernel boot"
            } else {
                ""
            }
        ),
    );
}
