//! The submit side: the JobRouter, its hooks and vm-capsule's knobs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{shared_dir_problem, ConfigSource, Report, Side};
use crate::snippet::{command_of, HOOKS, LIBEXEC_DIR, UNCONFIGURED_HOOK};
use vm_capsule_core::agent::{self, Linkage};
use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::{knobs, Settings, Side as KnobSide, TranslateSettings, WhichLog};
use vm_capsule_core::template::Template;

/// Smallest `PIPE_BUFFER_MAX` that holds a routed ad with room to spare.
pub const PIPE_BUFFER_NEEDED: u64 = 65536;
/// HTCondor's default `PIPE_BUFFER_MAX`.
const PIPE_BUFFER_DEFAULT: u64 = 10240;
/// Below this a routed ad of an ordinary job does not fit.
const PIPE_BUFFER_TOO_SMALL: u64 = 16384;

/// Check the submit side with the knobs in `settings`, HTCondor's tools found where `env`
/// says; `package_config` is the package's configuration file.
pub fn check(
    config: &ConfigSource,
    settings: &Settings,
    env: &Environment,
    package_config: &Path,
    report: &mut Report,
) {
    let mut s = Side {
        side: "submit",
        report,
    };
    super::check_config_source(&mut s, config);
    super::check_package_config(&mut s, config, package_config);
    let cfg = check_knobs(&mut s, settings);
    check_hooks(&mut s, config);
    if let Some(cfg) = &cfg {
        check_agent(&mut s, cfg);
        check_scratch(&mut s, &cfg.scratch_prefix);
        check_template(&mut s, cfg);
    }
    check_logs(&mut s, settings);
    check_flavour(&mut s, config);
    check_routes(&mut s, config);
    check_pipe_buffer(&mut s, config);
    let daemons = config.get("DAEMON_LIST").unwrap_or_default();
    if matches!(config, ConfigSource::Missing(_)) {
        // Said above.
    } else if daemons
        .split([',', ' '])
        .any(|d| d.eq_ignore_ascii_case("JOB_ROUTER"))
    {
        s.ok("DAEMON_LIST", "the JobRouter runs here");
    } else {
        s.warn(
            "DAEMON_LIST",
            "JOB_ROUTER is not in DAEMON_LIST: the hooks never run on this machine",
            "on the submit node: DAEMON_LIST = $(DAEMON_LIST) JOB_ROUTER (or `use ROLE : Submit` plus that line)",
        );
    }
    match env.tool_search().find("condor_hold") {
        Ok(p) => s.ok(
            "condor_hold",
            format!("{} (puts jobs with a bad input on hold)", p.display()),
        ),
        Err(e) => s.fail(
            "condor_hold",
            e.to_string(),
            "install HTCondor's tools where the configuration's BIN says",
        ),
    }
}

fn check_knobs(s: &mut Side<'_>, settings: &Settings) -> Option<TranslateSettings> {
    for w in &settings.warnings {
        s.warn(
            "knobs",
            w.clone(),
            "remove or rename it (see the knob table in ADMIN.md)",
        );
    }
    // Every knob set for this side, against its type in the table.
    for (knob, _) in settings.set_knobs() {
        if knob.side == KnobSide::Execute {
            continue;
        }
        if let Err(e) = settings.check(knob) {
            s.fail(knob.name, e.to_string(), knob.kind.expected());
        }
    }
    match settings.translate() {
        Ok(cfg) => {
            s.ok(
                "knobs",
                format!(
                    "{} = {}, {} knob(s) set",
                    knobs::TEMPLATE.name,
                    cfg.template_root.display(),
                    settings.set_knobs().count()
                ),
            );
            Some(cfg)
        }
        Err(e) => {
            s.fail(
                "knobs",
                e.to_string(),
                "fix the knob in the HTCondor configuration (ADMIN.md lists every knob)",
            );
            None
        }
    }
}

fn check_hooks(s: &mut Side<'_>, config: &ConfigSource) {
    let Some(keyword) = config.get("JOB_ROUTER_HOOK_KEYWORD") else {
        s.fail(
            "JOB_ROUTER_HOOK_KEYWORD",
            "not set: the JobRouter runs no hooks",
            format!("JOB_ROUTER_HOOK_KEYWORD = VMCAPSULE (`vm-capsule install-hooks --print {LIBEXEC_DIR}` prints all the lines)"),
        );
        return;
    };
    let keyword = keyword.trim().to_owned();
    let ours = env!("CARGO_PKG_VERSION");
    for (hook, suffix) in HOOKS {
        let knob = format!("{keyword}_{suffix}");
        if hook == UNCONFIGURED_HOOK {
            match config.get(&knob) {
                Some(_) => s.warn(
                    &knob,
                    "set: the JobRouter then finalizes every finished job one JOB_ROUTER_POLLING_PERIOD later, and vm-capsule's update hook reports nothing",
                    format!("remove {knob}"),
                ),
                None => s.ok(&knob, "not set (it would delay every job)"),
            }
            continue;
        }
        let Some(path) = config.get(&knob).map(|p| PathBuf::from(p.trim())) else {
            let needed = matches!(hook, "translate" | "finalize");
            let why = format!("not set: the {hook} hook does not run");
            let fix = format!("{knob} = {LIBEXEC_DIR}/vm-capsule-{hook}");
            if needed {
                s.fail(&knob, why, fix);
            } else {
                s.warn(&knob, why, fix);
            }
            continue;
        };
        if let Some(why) = vm_capsule_core::perms::unsafe_program(&path) {
            s.fail(
                &knob,
                why,
                format!("run `vm-capsule install-hooks {LIBEXEC_DIR}` (root-owned, mode 0755)"),
            );
            continue;
        }
        // The router runs a hook by its path with no arguments: only its name says what to do.
        if command_of(&[path.clone().into()]).as_deref() != Some(hook) {
            s.warn(
                &knob,
                format!("{} is not a vm-capsule-{hook} link", path.display()),
                format!("make sure it runs `vm-capsule {hook}`"),
            );
            continue;
        }
        match program_version(&path) {
            Some(v) if v == ours => s.ok(&knob, format!("{} (vm-capsule {v})", path.display())),
            other => s.warn(
                &knob,
                format!(
                    "{} is vm-capsule {}, this doctor is {ours}",
                    path.display(),
                    other.as_deref().unwrap_or("of an unknown version")
                ),
                "install one version everywhere",
            ),
        }
    }
}

/// `vm-capsule --version` of the program behind a hook link.
fn program_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit(' ')
        .next()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn check_agent(s: &mut Side<'_>, cfg: &TranslateSettings) {
    const KNOB: &str = agent::AGENT_KNOB;
    let Some(path) = &cfg.init_path else {
        s.ok(KNOB, "none: the template's guest carries its own agent");
        return;
    };
    match agent::check_shippable(path) {
        Err(e) => s.fail(
            KNOB,
            e.to_string(),
            format!("point it at a static capsule-init, e.g. {LIBEXEC_DIR}/capsule-init"),
        ),
        Ok(Linkage::Script) => s.ok(
            KNOB,
            format!("{} (a script the guest runs)", path.display()),
        ),
        Ok(_) => {
            let ours = env!("CARGO_PKG_VERSION");
            match agent::version(path) {
                Some(v) if v == ours => {
                    s.ok(KNOB, format!("{} (static, version {v})", path.display()));
                }
                other => s.warn(
                    KNOB,
                    format!(
                        "{} is static but reports version {}, the hooks are {ours}",
                        path.display(),
                        other.as_deref().unwrap_or("(none)")
                    ),
                    "ship the capsule-init built with these hooks",
                ),
            }
        }
    }
}

fn check_scratch(s: &mut Side<'_>, prefix: &Path) {
    const KNOB: &str = knobs::SCRATCH_DIR_PREFIX.name;
    match shared_dir_problem(prefix) {
        None => s.ok(
            KNOB,
            format!("{} (root-owned, mode 1777)", prefix.display()),
        ),
        Some(why) => s.fail(
            KNOB,
            why,
            format!("as root: install -d -m 1777 -o root {}", prefix.display()),
        ),
    }
}

fn check_logs(s: &mut Side<'_>, settings: &Settings) {
    for which in [WhichLog::Translate, WhichLog::Exit] {
        let knob = which.knobs().0.name;
        let base = settings.hook_log(which).0.base;
        let dir = base.parent().unwrap_or(Path::new("/"));
        match shared_dir_problem(dir) {
            None => s.ok(
                knob,
                format!(
                    "{}.<owner> (directory root-owned, mode 1777)",
                    base.display()
                ),
            ),
            Some(why) => s.warn(
                knob,
                format!("hooks running as job owners cannot keep their log there: {why}"),
                format!("as root: install -d -m 1777 -o root {}", dir.display()),
            ),
        }
    }
}

fn check_template(s: &mut Side<'_>, cfg: &TranslateSettings) {
    const KNOB: &str = knobs::TEMPLATE.name;
    match Template::load(&cfg.template_root, cfg.classad_template.as_deref()) {
        Ok(t) => s.ok(
            KNOB,
            format!(
                "{}: {} template, {} OS disk(s), data disk {}, {}",
                t.dir.display(),
                t.flavour.vm_type(),
                t.os_disks.len(),
                t.data_disk.path.display(),
                if t.boot.is_some() {
                    "direct kernel boot"
                } else {
                    "boots from its disk"
                }
            ),
        ),
        Err(e) => {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(cause) = src {
                why.push_str(&format!(": {cause}"));
                src = cause.source();
            }
            s.fail(KNOB, why, "fix the template (ADMIN.md, the template VM)");
        }
    }
}

/// The flavour the shipped route offers every `+WantJobRouter = true` job.
fn check_flavour(s: &mut Side<'_>, config: &ConfigSource) {
    const KNOB: &str = super::FLAVOUR_KNOB;
    if matches!(config, ConfigSource::Missing(_)) {
        return;
    }
    match config.flavour().as_deref() {
        Some("vanilla") => s.ok(
            KNOB,
            "vanilla: every +WantJobRouter = true job becomes a vanilla job that boots its VM with QEMU in an ordinary slot (execute nodes: QEMU and the startd probe)",
        ),
        Some("vm") => s.ok(
            KNOB,
            "vm: every +WantJobRouter = true job becomes a VM-universe job (execute nodes: libvirt and VM_TYPE)",
        ),
        Some(other) => s.fail(
            KNOB,
            format!("{other:?} is neither vanilla nor vm: JOB_ROUTER_ROUTE_NAMES names route VMCapsule_{other}, which does not exist, so no job is routed"),
            format!("{KNOB} = vanilla (QEMU inside ordinary slots) or vm (the VM universe)"),
        ),
        None => s.info(
            KNOB,
            "not set: the routes are the configuration's own (JOB_ROUTER_ROUTE_NAMES)",
        ),
    }
}

fn check_routes(s: &mut Side<'_>, config: &ConfigSource) {
    if matches!(config, ConfigSource::Missing(_)) {
        return;
    }
    if let Some(names) = config.get("JOB_ROUTER_ROUTE_NAMES") {
        let mut ours = 0;
        for name in names.split([',', ' ']).filter(|n| !n.is_empty()) {
            let knob = format!("JOB_ROUTER_ROUTE_{name}");
            let Some(text) = config.get(&knob) else {
                s.fail(
                    &knob,
                    format!("route {name} is listed in JOB_ROUTER_ROUTE_NAMES but not defined"),
                    format!("define it with `{knob} @=rt ... @rt` or drop it from the list"),
                );
                continue;
            };
            match route_universe(&text).as_deref() {
                Some(u @ ("vm" | "vanilla")) => {
                    ours += 1;
                    s.ok(&knob, format!("UNIVERSE {}", u.to_ascii_uppercase()));
                }
                Some(other) => s.info(&knob, format!("UNIVERSE {other}: not a vm-capsule route")),
                None => s.fail(
                    &knob,
                    "no UNIVERSE line: the router applies the route's universe after the hook, and a route without one makes grid jobs",
                    "add `UNIVERSE VM` (VM universe) or `UNIVERSE VANILLA` (vanilla flavour)",
                ),
            }
        }
        if ours == 0 {
            s.fail(
                "routes",
                "no route with UNIVERSE VM or UNIVERSE VANILLA",
                "see the routes in `vm-capsule install-hooks --print`",
            );
        }
        return;
    }
    match config.get("JOB_ROUTER_ENTRIES") {
        Some(entries) => {
            let compact: String = entries.chars().filter(|c| !c.is_whitespace()).collect();
            let compact = compact.to_ascii_lowercase();
            if compact.contains("targetuniverse=13") || compact.contains("targetuniverse=5") {
                s.ok("JOB_ROUTER_ENTRIES", "a route with TargetUniverse 13 or 5");
            } else {
                s.fail(
                    "JOB_ROUTER_ENTRIES",
                    "no route with TargetUniverse = 13 (vm) or 5 (vanilla)",
                    "add TargetUniverse = 13 to the route",
                );
            }
        }
        None => s.fail(
            "routes",
            "neither JOB_ROUTER_ROUTE_NAMES nor JOB_ROUTER_ENTRIES is set: no job is routed",
            "see the routes in `vm-capsule install-hooks --print`",
        ),
    }
}

/// The `UNIVERSE` a route's text names, lower case (`13` -> `vm`, `5` -> `vanilla`).
fn route_universe(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let first = words.next()?;
        if !first.eq_ignore_ascii_case("UNIVERSE") {
            return None;
        }
        let u = words.next()?.to_ascii_lowercase();
        Some(match u.as_str() {
            "13" => "vm".to_owned(),
            "5" => "vanilla".to_owned(),
            _ => u,
        })
    })
}

fn check_pipe_buffer(s: &mut Side<'_>, config: &ConfigSource) {
    if matches!(config, ConfigSource::Missing(_)) {
        return;
    }
    let raw = config.get_for("JOB_ROUTER", "PIPE_BUFFER_MAX");
    let value = raw.as_deref().map(|v| v.trim().parse::<u64>());
    let size = match value {
        None => PIPE_BUFFER_DEFAULT,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            s.fail(
                "PIPE_BUFFER_MAX",
                format!(
                    "JOB_ROUTER.PIPE_BUFFER_MAX = {:?} is not a number",
                    raw.unwrap_or_default()
                ),
                "JOB_ROUTER.PIPE_BUFFER_MAX = 1048576",
            );
            return;
        }
    };
    let fix = "JOB_ROUTER.PIPE_BUFFER_MAX = 1048576";
    if size < PIPE_BUFFER_TOO_SMALL {
        s.fail(
            "PIPE_BUFFER_MAX",
            format!("the JobRouter reads at most {size} bytes of a hook's output: routed ads of jobs with a long environment or many files do not fit and their routing fails"),
            fix,
        );
    } else if size < PIPE_BUFFER_NEEDED {
        s.warn(
            "PIPE_BUFFER_MAX",
            format!("{size} bytes: enough for most routed ads, not for jobs with very long environments"),
            fix,
        );
    } else {
        s.ok("PIPE_BUFFER_MAX", format!("{size} bytes for the JobRouter"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universe_of_a_route() {
        assert_eq!(
            route_universe("  UNIVERSE VM\n  REQUIREMENTS x").as_deref(),
            Some("vm")
        );
        assert_eq!(route_universe("universe 5").as_deref(), Some("vanilla"));
        assert_eq!(
            route_universe("REQUIREMENTS WantJobRouter").as_deref(),
            None
        );
        assert_eq!(route_universe("UNIVERSE GRID").as_deref(), Some("grid"));
    }
}
