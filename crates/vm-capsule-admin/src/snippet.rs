//! The HTCondor configuration vm-capsule needs, as one commented `config.d` file: the hooks,
//! a route per flavour with `VM_CAPSULE_FLAVOUR` choosing the one the pool offers,
//! `PIPE_BUFFER_MAX`, the startd probe, the libvirt domain script and every `VM_CAPSULE_*`
//! knob with its default.
//!
//! `vm-capsule install-hooks` writes (or prints) it and the packages ship it as
//! `/etc/condor/config.d/50-vm-capsule.conf`, so both say the same thing.

use std::ffi::{OsStr, OsString};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use vm_capsule_core::settings::knobs::{DefaultValue, Knob};
use vm_capsule_core::settings::{knobs, KNOBS};

/// The hook names, as executables and subcommands, with their HTCondor knob suffixes.
pub const HOOKS: [(&str, &str); 4] = [
    ("translate", "HOOK_TRANSLATE_JOB"),
    ("update", "HOOK_UPDATE_JOB_INFO"),
    ("finalize", "HOOK_JOB_FINALIZE"),
    ("cleanup", "HOOK_JOB_CLEANUP"),
];
/// The hook the configuration leaves out: the update hook has nothing to report, and while
/// one is configured the JobRouter finalizes a finished job a whole `JOB_ROUTER_POLLING_PERIOD`
/// later (it looks at the job again only when the hook has exited, `StatusClient::hookExited`,
/// after that poll's finalize step).
pub const UNCONFIGURED_HOOK: &str = "update";
/// Other subcommands reachable by a link: `vm-capsule-libvirt-xml`, which configurations
/// written before `LIBVIRT_XML_SCRIPT_ARGS` was used name (the vm-gahp runs it by its path).
/// `vm-capsule-prepare-job`, the node policy's starter hook, is one too.
pub const LINKED_COMMANDS: [&str; 2] = ["libvirt-xml", "prepare-job"];

/// The subcommand a link's name stands for (`vm-capsule-translate` -> `translate`).
pub fn command_for_program(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    let cmd = name.strip_prefix("vm-capsule-")?;
    HOOKS
        .iter()
        .map(|(h, _)| *h)
        .chain(LINKED_COMMANDS)
        .find(|h| *h == cmd)
}

/// The command line the program parses for `argv` as started: a link's name supplies the
/// subcommand (HTCondor runs a JobRouter hook by its path with no arguments), unless the
/// arguments already name it. Nothing else is read from argv[0], which is not always the
/// program: HTCondor's startd cron passes the cron job's name there.
pub fn command_line(mut argv: Vec<OsString>) -> Vec<OsString> {
    let linked = argv
        .first()
        .and_then(|a0| command_for_program(Path::new(a0)));
    if let Some(cmd) = linked {
        if argv.get(1).map(OsString::as_os_str) != Some(OsStr::new(cmd)) {
            argv.insert(1, cmd.into());
        }
    }
    argv
}

/// The subcommand `argv` runs (its first argument after [`command_line`]), when there is one.
pub fn command_of(argv: &[OsString]) -> Option<String> {
    command_line(argv.to_vec())
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| !a.starts_with('-'))
        .map(str::to_owned)
}

/// Where the packages put this configuration (read where `LOCAL_CONFIG_DIR` names
/// `/etc/condor/config.d`, as distribution packages of HTCondor set it).
pub const CONFIG_FILE: &str = "/etc/condor/config.d/50-vm-capsule.conf";
/// Where the packages install the programs.
pub const LIBEXEC_DIR: &str = "/usr/libexec/vm-capsule";
/// Where the packages keep the template and the scratch prefix.
pub const STATE_DIR: &str = "/var/lib/vm-capsule";

/// What the snippet names.
#[derive(Debug, Clone)]
pub struct Snippet {
    /// Directory of the hook links.
    pub dir: PathBuf,
    /// `JOB_ROUTER_HOOK_KEYWORD`.
    pub keyword: String,
    /// The guest agent.
    pub agent: PathBuf,
    /// The `vm-capsule` program: the startd probe, the libvirt script, and the launcher
    /// shipped with vanilla-flavour jobs.
    pub program: PathBuf,
}

impl Snippet {
    /// The snippet for programs installed in `dir` (agent and launcher there too).
    pub fn for_dir(dir: &Path) -> Snippet {
        Snippet {
            dir: dir.to_owned(),
            keyword: "VMCAPSULE".to_owned(),
            agent: dir.join("capsule-init"),
            program: dir.join("vm-capsule"),
        }
    }

    /// The path of link `name` (`translate` -> `<dir>/vm-capsule-translate`).
    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join(format!("vm-capsule-{name}"))
    }

    /// One line per hook HTCondor runs (the update hook is left out, with why).
    fn hook_lines(&self, t: &mut String) {
        let kw = &self.keyword;
        for (hook, knob) in HOOKS {
            if hook == UNCONFIGURED_HOOK {
                let _ = writeln!(
                    t,
                    "# No {kw}_{knob}: it would make every job end one JOB_ROUTER_POLLING_PERIOD later."
                );
                continue;
            }
            let _ = writeln!(t, "{kw}_{knob} = {}", self.link(hook).display());
        }
    }

    /// The node policy's lines, commented out: with no router, the starter's prepare-job hook
    /// runs the jobs `VM_CAPSULE_JOB` picks in the node's VM.
    fn node_policy_lines(&self) -> String {
        format!(
            "\
# Node policy, with no router: every vanilla job {job_knob} is true for (MY = the slot,
# TARGET = the job, as SINGULARITY_JOB) runs in this node's template VM ({template_knob};
# OS disks from {node_image_dir_knob}), whatever access point it came from. The starter's
# prepare-job hook decides per job from the slot's VMCapsuleJob (so users may match on it:
# requirements = TARGET.VMCapsuleJob =!= true avoids VMs). Uncomment the five lines; the
# hook keyword is the starter's only one (a node with other starter hooks must chain them).
#{job_knob} = TARGET.Owner =!= \"trusted\"
#VMCapsuleJob = $({job_knob})
#STARTD_ATTRS = $(STARTD_ATTRS) VMCapsuleJob
#STARTER_JOB_HOOK_KEYWORD = {kw}
#{kw}_HOOK_PREPARE_JOB = {prepare_job}
",
            kw = self.keyword,
            job_knob = knobs::JOB.name,
            template_knob = knobs::TEMPLATE.name,
            node_image_dir_knob = knobs::NODE_IMAGE_DIR.name,
            prepare_job = self.link("prepare-job").display(),
        )
    }

    /// The whole file.
    pub fn render(&self) -> String {
        let mut t = String::new();
        let kw = &self.keyword;
        // Writing to a String cannot fail.
        let _ = write!(
            t,
            "\
# vm-capsule: JobRouter hooks that run vanilla jobs inside virtual machines.
# Written by `vm-capsule install-hooks` (version {version}); check the result with
# `vm-capsule doctor`. Every line is explained in the administrator's guide (ADMIN.md).

##### Submit side: the JobRouter and its hooks ##########################################
# Run the JobRouter on the submit node (HTCondor 24+ sets DAEMON_LIST through `use ROLE`):
#DAEMON_LIST = $(DAEMON_LIST) JOB_ROUTER
JOB_ROUTER_HOOK_KEYWORD = {kw}
",
            version = env!("CARGO_PKG_VERSION"),
        );
        self.hook_lines(&mut t);
        let _ = write!(
            t,
            "\
# Before HTCondor 8.4.9 the finalize hook was called JOB_EXIT:
#{kw}_HOOK_JOB_EXIT = {finalize}

# Users add one line, +WantJobRouter = true; the pool decides how the VM runs. The one
# route below is the flavour this pool offers ({flavour_knob}):
#   vanilla  the routed job is a vanilla job whose executable boots the VM with QEMU inside
#            an ordinary slot: any execute node with QEMU and this package (the startd
#            probe below advertises it);
#   vm       the routed job is a VM-universe job: execute nodes with libvirt (VM_TYPE).
{flavour_knob} = vanilla
JOB_ROUTER_ROUTE_NAMES = $(JOB_ROUTER_ROUTE_NAMES) VMCapsule_$({flavour_knob})
# A route MUST say its universe: the router applies it after the hook.
JOB_ROUTER_ROUTE_VMCapsule_vanilla @=rt
  UNIVERSE VANILLA
  REQUIREMENTS WantJobRouter is true
@rt
JOB_ROUTER_ROUTE_VMCapsule_vm @=rt
  UNIVERSE VM
  REQUIREMENTS WantJobRouter is true
@rt

# The router reads at most PIPE_BUFFER_MAX bytes of a hook's output (default 10240); a
# routed ad is a few KiB, more for jobs with long environments or many input files.
JOB_ROUTER.PIPE_BUFFER_MAX = 1048576

# Keep a job that asks for routing from matching a slot before the router takes it
# (on the execute nodes):
#START = ($(START)) && ((TARGET.WantJobRouter =!= true) || (TARGET.RoutedBy =!= undefined))

##### Execute side ########################################################################
# Advertise HasVMCapsuleQemu, VMCapsuleKvm, VMCapsuleVersion (and VMCapsuleUnusableReason)
# for the vanilla flavour; the routed job requires HasVMCapsuleQemu. The startd passes the
# cron job's name as argv[0], so the command is an argument.
STARTD_CRON_JOBLIST = $(STARTD_CRON_JOBLIST) VMCAPSULE
STARTD_CRON_VMCAPSULE_EXECUTABLE = {program}
STARTD_CRON_VMCAPSULE_ARGS = probe
STARTD_CRON_VMCAPSULE_PERIOD = 10m

# VM universe: the domain XML for vm-capsule jobs (direct kernel boot, kvm or qemu domain,
# console on a pty); other VM jobs get HTCondor's built-in XML.
LIBVIRT_XML_SCRIPT = {program}
LIBVIRT_XML_SCRIPT_ARGS = libvirt-xml
# The starter polls the VM every VM_STATUS_INTERVAL seconds (default 60, minimum 30):
# a short job waits up to that long after its VM powered off.
#VM_STATUS_INTERVAL = 30

{node_policy}
##### vm-capsule's own knobs (each with its default) #####################################
# Required: the template VM (a directory holding condor_vm_capsule/, and the
# classad-template.ad read from there). Make one in place, as root:
#   {program} template build --debian bookworm {state}/template
# (TEMPLATES.md in /usr/share/doc/vm-capsule has this and the other ways).
{template_knob} = {state}/template
# Per-job scratch dirs, <prefix>/<owner>/<job>.XXXXXX; create once: install -d -m 1777 <prefix>
{scratch_dir_prefix_knob} = {state}/scratch
# Hook logs, one file per job owner (<file>.<owner>); create the directory once:
# install -d -m 1777 /var/log/vm-capsule
{translate_log_knob} = {translate_log}
{exit_log_knob} = {exit_log}
# The static guest agent put on each data disk, and the launcher of vanilla-flavour jobs.
{init_script_path_knob} = {agent}
{launcher_path_knob} = {launcher}
",
            finalize = self.link("finalize").display(),
            program = self.program.display(),
            state = STATE_DIR,
            agent = self.agent.display(),
            launcher = self.program.display(),
            flavour_knob = knobs::FLAVOUR.name,
            template_knob = knobs::TEMPLATE.name,
            scratch_dir_prefix_knob = knobs::SCRATCH_DIR_PREFIX.name,
            translate_log_knob = knobs::TRANSLATE_LOG.name,
            translate_log = default_value(&knobs::TRANSLATE_LOG),
            exit_log_knob = knobs::EXIT_LOG.name,
            exit_log = default_value(&knobs::EXIT_LOG),
            init_script_path_knob = knobs::INIT_SCRIPT_PATH.name,
            launcher_path_knob = knobs::LAUNCHER_PATH.name,
            node_policy = self.node_policy_lines(),
        );
        other_knobs(&mut t, &SET_KNOBS);
        t
    }
}

/// The knobs the snippet sets; the others are listed commented out.
const SET_KNOBS: [Knob; 7] = [
    knobs::TEMPLATE,
    knobs::SCRATCH_DIR_PREFIX,
    knobs::TRANSLATE_LOG,
    knobs::EXIT_LOG,
    knobs::INIT_SCRIPT_PATH,
    knobs::LAUNCHER_PATH,
    knobs::FLAVOUR,
];

/// Every knob but those in `set`, commented out at its default, with what it does.
fn other_knobs(t: &mut String, set: &[Knob]) {
    let _ = writeln!(t, "\n# The others, commented out at their defaults:");
    for knob in KNOBS.iter().filter(|k| !set.contains(k)) {
        let _ = writeln!(t, "# {}", knob.doc);
        let _ = writeln!(t, "#{} = {}", knob.name, default_value(knob));
    }
}

/// A knob's default as a value to write after `=`: a description stays a comment of its own.
fn default_value(knob: &Knob) -> String {
    match knob.default {
        DefaultValue::Value(v) => v.to_owned(),
        DefaultValue::Required => "   (required)".to_owned(),
        DefaultValue::Described(d) => format!("   ({d})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn argv0_names_the_command_only_for_a_link() {
        let cases: [(&[&str], Option<&str>); 8] = [
            // A JobRouter hook: its path, no arguments.
            (
                &["/usr/libexec/vm-capsule/vm-capsule-translate"],
                Some("translate"),
            ),
            (&["vm-capsule-finalize", "--debug"], Some("finalize")),
            (
                &[
                    "/x/vm-capsule-libvirt-xml",
                    "libvirt-xml",
                    "--domain-type",
                    "qemu",
                ],
                Some("libvirt-xml"),
            ),
            // The startd cron: the job's name, then STARTD_CRON_<NAME>_ARGS.
            (&["VMCAPSULE", "probe"], Some("probe")),
            (&["VMCAPSULE"], None),
            // The starter: the transferred executable by its own name (or an old peer's).
            (
                &[
                    "/var/lib/condor/execute/dir_1/vm-capsule",
                    "run",
                    "capsule.ad",
                ],
                Some("run"),
            ),
            (
                &["/var/lib/condor/execute/dir_1/condor_exec.exe", "run"],
                Some("run"),
            ),
            // A probe link means nothing any more: its argv[0] never reached it from cron.
            (&["vm-capsule-probe"], None),
        ];
        for (words, want) in cases {
            assert_eq!(command_of(&argv(words)).as_deref(), want, "{words:?}");
        }
        assert_eq!(
            command_line(argv(&["/h/vm-capsule-cleanup"])),
            argv(&["/h/vm-capsule-cleanup", "cleanup"])
        );
    }

    #[test]
    fn every_knob_appears_and_the_active_lines_parse() {
        let text = Snippet::for_dir(Path::new(LIBEXEC_DIR)).render();
        for knob in KNOBS {
            assert!(
                text.contains(&format!("{} = ", knob.name)),
                "{} missing",
                knob.name
            );
        }
        assert!(text.contains(
            "VMCAPSULE_HOOK_TRANSLATE_JOB = /usr/libexec/vm-capsule/vm-capsule-translate"
        ));
        assert!(text.contains("UNIVERSE VM\n") && text.contains("UNIVERSE VANILLA\n"));
        assert!(text.contains(
            "STARTD_CRON_VMCAPSULE_EXECUTABLE = /usr/libexec/vm-capsule/vm-capsule\nSTARTD_CRON_VMCAPSULE_ARGS = probe\n"
        ));
        assert!(text.contains(
            "LIBVIRT_XML_SCRIPT = /usr/libexec/vm-capsule/vm-capsule\nLIBVIRT_XML_SCRIPT_ARGS = libvirt-xml\n"
        ));
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("VMCAPSULE_HOOK_UPDATE_JOB_INFO")),
            "the update hook delays every job by a polling period"
        );
        // Without the @= blocks, what is left is plain assignments (our config subset).
        let mut plain = String::new();
        let mut in_block = false;
        for line in text.lines() {
            if line.contains("@=rt") {
                in_block = true;
            } else if line == "@rt" {
                in_block = false;
            } else if !in_block {
                plain.push_str(line);
                plain.push('\n');
            }
        }
        let vars =
            vm_capsule_core::condor_config::parse_config(&plain, Path::new("50-vm-capsule.conf"))
                .unwrap();
        assert_eq!(
            vars.get("VM_CAPSULE_INIT_SCRIPT_PATH").map(String::as_str),
            Some("/usr/libexec/vm-capsule/capsule-init")
        );
        assert_eq!(
            vars.get("JOB_ROUTER.PIPE_BUFFER_MAX").map(String::as_str),
            Some("1048576")
        );
        // One route, the pool's flavour, asking users for nothing but WantJobRouter.
        assert_eq!(
            vars.get("JOB_ROUTER_ROUTE_NAMES").map(|v| v.trim()),
            Some("VMCapsule_vanilla")
        );
        let requirements: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("REQUIREMENTS"))
            .collect();
        assert_eq!(requirements, ["  REQUIREMENTS WantJobRouter is true"; 2]);
    }
}
