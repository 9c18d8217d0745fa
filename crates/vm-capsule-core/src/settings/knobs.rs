//! The table of every knob: its name, type, default, the side that reads it and what it does.
//!
//! Loading ([`super::Settings`]), the `config.d` snippet, `doctor`, the README and ADMIN.md
//! knob tables and the man page are all produced from [`KNOBS`].

/// What a knob's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A path.
    Path,
    /// An absolute path (a place on the execute nodes).
    AbsolutePath,
    /// A list of absolute, normalised paths, separated by commas or spaces.
    PathList,
    /// A path, or `none`.
    PathOrNone,
    /// A whole number of bytes.
    Bytes,
    /// A whole number of MiB.
    Mib,
    /// A whole number of seconds.
    Seconds,
    /// A whole number.
    Count,
    /// HTCondor's booleans: true/false, yes/no, 1/0, t/f, y/n.
    Bool,
    /// One of these words, case-insensitive; `a|b` accepts `b` as another spelling of `a`.
    Choice(&'static [&'static str]),
    /// Any text.
    Text,
    /// Accepted and ignored (a knob of the seed vm-capsule).
    Unused,
}

impl Kind {
    /// What a value of this kind looks like, for errors and the docs.
    pub fn expected(self) -> String {
        match self {
            Kind::Path => "a path".to_owned(),
            Kind::AbsolutePath => "an absolute path".to_owned(),
            Kind::PathList => "a list of absolute, normalised paths".to_owned(),
            Kind::PathOrNone => "a path, or none".to_owned(),
            Kind::Bytes => "a whole number of bytes".to_owned(),
            Kind::Mib => "a whole number of MiB".to_owned(),
            Kind::Seconds => "a whole number of seconds".to_owned(),
            Kind::Count => "a whole number".to_owned(),
            Kind::Bool => "true or false".to_owned(),
            Kind::Choice(words) => {
                let words: Vec<&str> = words.iter().map(|w| canonical(w)).collect();
                match words.as_slice() {
                    [] => "nothing".to_owned(),
                    [one] => (*one).to_owned(),
                    [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
                }
            }
            Kind::Text => "text".to_owned(),
            Kind::Unused => "anything (unused)".to_owned(),
        }
    }
}

/// The documented spelling of a choice (`qemu` of `qemu|tcg`).
pub fn canonical(word: &str) -> &str {
    word.split('|').next().unwrap_or(word)
}

/// What a knob is when it is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// It must be set.
    Required,
    /// This value, read as if it had been set.
    Value(&'static str),
    /// Worked out when needed (or nothing): how.
    Described(&'static str),
}

/// Which programs read a knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The JobRouter hooks on the submit machine.
    Submit,
    /// The launcher, the startd probe and the libvirt script on the execute nodes.
    Execute,
    /// Both.
    Both,
    /// HTCondor itself, from the configuration vm-capsule ships; our programs do not.
    Htcondor,
}

impl Side {
    /// The word the docs use.
    pub fn word(self) -> &'static str {
        match self {
            Side::Submit => "submit",
            Side::Execute => "execute",
            Side::Both => "both",
            Side::Htcondor => "HTCondor",
        }
    }
}

/// One knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    /// The name, upper case (`_CONDOR_<name>` in the environment overrides it).
    pub name: &'static str,
    /// What its value must be.
    pub kind: Kind,
    /// What it is when unset.
    pub default: DefaultValue,
    /// Which programs read it.
    pub side: Side,
    /// What it does, one line of Markdown.
    pub doc: &'static str,
}

macro_rules! knobs {
    ($($(#[$meta:meta])* $id:ident = $name:literal, $kind:expr, $default:expr, $side:ident, $doc:literal;)*) => {
        $(
            $(#[$meta])*
            pub const $id: Knob = Knob {
                name: $name,
                kind: $kind,
                default: $default,
                side: Side::$side,
                doc: $doc,
            };
        )*
        /// Every knob, in the order the docs list them.
        pub const KNOBS: &[Knob] = &[$($id),*];
    };
}

use DefaultValue::{Described, Required, Value};
use Kind::{
    AbsolutePath, Bool, Bytes, Choice, Count, Mib, Path, PathList, PathOrNone, Seconds, Text,
    Unused,
};

knobs! {
    /// The template VM.
    TEMPLATE = "VM_CAPSULE_TEMPLATE", Path, Required, Both,
        "directory holding `condor_vm_capsule/`, the template VM (on an execute node with `VM_CAPSULE_JOB`: the node's template)";
    /// Where per-job scratch dirs go.
    SCRATCH_DIR_PREFIX = "VM_CAPSULE_SCRATCH_DIR_PREFIX", Path, Value("/tmp/vm-capsule"), Submit,
        "per-job scratch dirs go under `<prefix>/<owner>/`; create it as root, mode 1777 (hooks never create it)";
    /// The log of translate, update and cleanup.
    TRANSLATE_LOG = "VM_CAPSULE_TRANSLATE_LOG", Path, Value("/var/log/vm-capsule/TranslateLog"), Submit,
        "log of the translate, update and cleanup hooks; each job owner writes `<file>.<owner>`";
    /// The log of finalize.
    EXIT_LOG = "VM_CAPSULE_EXIT_LOG", Path, Value("/var/log/vm-capsule/ExitLog"), Submit,
        "log of the finalize hook; each job owner writes `<file>.<owner>`";
    /// Rotation size of the translate log.
    MAX_TRANSLATE_LOG = "VM_CAPSULE_MAX_TRANSLATE_LOG", Bytes, Value("10485760"), Submit,
        "bytes after which the translate log becomes `<file>.old`, one old file kept (0: never)";
    /// Rotation size of the finalize log.
    MAX_EXIT_LOG = "VM_CAPSULE_MAX_EXIT_LOG", Bytes, Value("10485760"), Submit,
        "bytes after which the finalize log becomes `<file>.old`, one old file kept (0: never)";
    /// DEBUG lines in the hook logs.
    DEBUG = "VM_CAPSULE_DEBUG", Bool, Value("false"), Submit,
        "`true`: the hooks also log DEBUG lines (as `--debug` does)";
    /// The data disk's partition offset.
    DISK_PART_OFFSET = "VM_CAPSULE_DISK_PART_OFFSET", Bytes, Described("the template data disk's, else 1048576"), Submit,
        "byte offset of the data disk's FAT partition (the seed's classic value is 32256)";
    /// A seed knob.
    CONDOR_TARBALL = "VM_CAPSULE_CONDOR_TARBALL", Unused, Described("unused"), Submit,
        "seed knob: a Condor tarball for the guest, accepted for compatibility; `capsule-init` needs none";
    /// A seed knob.
    CONDOR_TARBALL_VERSION = "VM_CAPSULE_CONDOR_TARBALL_VERSION", Unused, Described("unused"), Submit,
        "seed knob: the version of that tarball, accepted for compatibility";
    /// The guest agent shipped on each data disk.
    INIT_SCRIPT_PATH = "VM_CAPSULE_INIT_SCRIPT_PATH", PathOrNone, Described("`capsule-init` beside `vm-capsule`"), Submit,
        "the guest agent put on each data disk; `none` when the template's guest image carries its own (saves a 1.5 MiB copy per job)";
    /// A seed knob.
    DATA_DISK_MOUNT_POINT = "VM_CAPSULE_DATA_DISK_MOUNT_POINT", Unused, Value("/condor-data"), Submit,
        "seed knob, accepted for compatibility: where a guest that mounts the data disk mounts it";
    /// The VM submit description.
    CONDOR_CLASSAD_TEMPLATE = "VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE", Path,
        Described("`<VM_CAPSULE_TEMPLATE>/classad-template.ad` when there is one, else built-in KVM defaults"), Submit,
        "`condor_submit -dump` output of the admin's VM submit file";
    /// The data disk's FAT label.
    DATA_DISK_LABEL = "VM_CAPSULE_DATA_DISK_LABEL", Text, Value("CONDORDATA"), Submit,
        "FAT volume label of the data disk";
    /// Room for outputs.
    OUTPUT_HEADROOM_MB = "VM_CAPSULE_OUTPUT_HEADROOM_MB", Mib, Value("256"), Submit,
        "room for outputs on the data disk when the job has no `request_disk`";
    /// Largest data disk.
    MAX_DATA_DISK_MB = "VM_CAPSULE_MAX_DATA_DISK_MB", Mib, Value("65536"), Submit,
        "largest data disk translate creates (and finalize reads back); bigger jobs are held";
    /// Default VM memory.
    VM_MEMORY_MB = "VM_CAPSULE_VM_MEMORY_MB", Mib, Value("512"), Submit,
        "VM memory when neither the template nor the job's `RequestMemory` says more";
    /// The job's user in the guest.
    JOB_USER = "VM_CAPSULE_JOB_USER", Text, Value("condor"), Submit,
        "user the job runs as inside the guest (falls back to `nobody`)";
    /// The guest agent's time limit.
    WALL_TIME_LIMIT = "VM_CAPSULE_WALL_TIME_LIMIT", Seconds, Value("0"), Submit,
        "seconds after which the guest agent kills the job (0: none)";
    /// The flavour of the shipped route.
    FLAVOUR = "VM_CAPSULE_FLAVOUR", Choice(&["vanilla", "vm"]), Value("vanilla"), Htcondor,
        "the flavour the shipped route gives every `+WantJobRouter = true` job: `vanilla` (QEMU inside ordinary slots) or `vm` (the VM universe); HTCondor reads it (`JOB_ROUTER_ROUTE_NAMES` names route `VMCapsule_<flavour>`), the hooks do not";
    /// Overrides the route's universe.
    ROUTED_UNIVERSE = "VM_CAPSULE_ROUTED_UNIVERSE", Choice(&["vm", "vanilla"]), Described("from the route (13: vm, 5: vanilla)"), Submit,
        "`vm` or `vanilla`: which flavour translate produces, whatever the route says (for hand runs)";
    /// The launcher shipped with vanilla-flavour jobs.
    LAUNCHER_PATH = "VM_CAPSULE_LAUNCHER_PATH", Path, Described("the `vm-capsule` binary running the hook"), Submit,
        "vanilla flavour: the launcher shipped with each job (use a static build; the packaged one is)";
    /// The launcher on the execute nodes.
    NODE_LAUNCHER = "VM_CAPSULE_NODE_LAUNCHER", AbsolutePath, Described("unset: the launcher travels with each job"), Submit,
        "vanilla flavour: vm-capsule's absolute path on the execute nodes (the package's `/usr/libexec/vm-capsule/vm-capsule`); set, jobs run it there with the `capsule-init` beside it, ship neither, and match only nodes whose probe advertises this release's `VMCapsuleVersion`";
    /// Time for boot and poweroff.
    BOOT_TIMEOUT = "VM_CAPSULE_BOOT_TIMEOUT", Seconds, Value("600"), Submit,
        "vanilla flavour: seconds allowed for boot and poweroff beyond the job's time limit";
    /// Who starts the guest agent.
    AGENT_START = "VM_CAPSULE_AGENT_START", Choice(&["image", "cloud-init|cloudinit"]), Value("image"), Submit,
        "`image`: the guest image starts `capsule-init` (its systemd unit, docs/TEMPLATES.md); `cloud-init`: each data disk is labelled `CIDATA` and carries a NoCloud `user-data` that runs the shipped agent, so a stock cloud image is a template (needs cloud-init 19.1 or later and an agent to ship)";
    /// OS disks staged on the execute nodes.
    NODE_IMAGE_DIR = "VM_CAPSULE_NODE_IMAGE_DIR", AbsolutePath, Described("unset: the OS disk travels with each job"), Both,
        "absolute directory on every execute node holding the template's OS disk(s) and `.sha256`; jobs ship only their data disk (and in the VM universe a 256 KiB overlay backed by the node's copy) and require `stringListMember(<sha256>, TARGET.VMCapsuleImages)` (KVM/Xen templates)";
    /// How long a hook may run.
    HOOK_TIMEOUT = "VM_CAPSULE_HOOK_TIMEOUT", Seconds, Value("3600"), Submit,
        "seconds a hook may run: translate then exits for a retry, finalize reports `ExitCode = 125`";
    /// Failed job dirs kept.
    KEEP_FAILED = "VM_CAPSULE_KEEP_FAILED", Count, Value("10"), Submit,
        "failed job dirs kept per owner for inspection; older ones are removed";
    /// Tests only.
    TEST_ANY_USER = "VM_CAPSULE_TEST_ANY_USER", Bool, Value("false"), Submit,
        "tests only: let the hooks run as root or as a user other than the job's owner";
    /// The QEMU on the execute nodes.
    QEMU = "VM_CAPSULE_QEMU", Path, Described("`qemu-system-x86_64` on `PATH`, else `/usr/libexec/qemu-kvm`"), Execute,
        "the QEMU the launcher runs and the probe checks";
    /// TCG's translation cache.
    TCG_TB_MIB = "VM_CAPSULE_TCG_TB_MIB", Mib, Value("64"), Execute,
        "the launcher under TCG: the bound on QEMU's translation cache, MiB (0: QEMU's own default, which lets it grow towards 1 GiB; a benchmark knob, docs/PERFORMANCE.md)";
    /// Read-only host paths every capsule on the node sees.
    HOST_PATHS = "VM_CAPSULE_HOST_PATHS", PathList, Described("none"), Execute,
        "directories of the execute node every capsule sees at the same path, read-only (`/cvmfs, /etc/grid-security/certificates`): absolute, normalised, not `/`, at most 16; the probe advertises those present as `VMCapsuleHostPaths`, and a job needing one sets `+VMCapsuleHostPaths` (docs/USER.md)";
    /// The libvirt domain type.
    LIBVIRT_DOMAIN_TYPE = "VM_CAPSULE_LIBVIRT_DOMAIN_TYPE", Choice(&["kvm", "qemu|tcg", "auto"]), Value("auto"), Execute,
        "VM universe: `kvm`, `qemu` (TCG) or `auto` (kvm where the node has usable KVM)";
    /// The node policy.
    JOB = "VM_CAPSULE_JOB", Text, Described("unset: no job runs in a VM by node policy"), Execute,
        "node policy: a ClassAd expression over the slot (`MY`) and the job (`TARGET`), as `SINGULARITY_JOB`; the jobs it is true for run in this node's template VM, started by the starter's prepare-job hook (ADMIN.md \"Make VMs a node policy\")";
    /// What the node policy does with a job it cannot run in a VM.
    JOB_UNFIT = "VM_CAPSULE_JOB_UNFIT", Choice(&["hold", "native"]), Value("hold"), Execute,
        "node policy: a job `VM_CAPSULE_JOB` picks that cannot run in the node's VM (too big for the template, an executable for another OS or architecture): `hold` it with the reason, or run it `native`ly (the reason goes to the job's event log)";
    /// What other VM jobs get.
    LIBVIRT_OTHER_JOBS = "VM_CAPSULE_LIBVIRT_OTHER_JOBS", Choice(&["refuse", "builtin"]), Value("refuse"), Execute,
        "VM universe: what VM jobs that are not vm-capsule jobs get from `libvirt-xml`: `refuse` (held) or `builtin` (HTCondor's own XML, which trusts their disk images with the node's files)";
    /// Network for jobs that ask.
    NETWORK = "VM_CAPSULE_NETWORK", Choice(&["none", "nat"]), Value("none"), Execute,
        "vanilla flavour: `nat` gives jobs that ask (`+VMCapsuleNetwork = true`) outbound user-mode NAT through `passt` (the guest reaches what the node reaches, not the node's own loopback services; nothing inbound); `none`: no network, and the probe advertises `VMCapsuleNetwork = \"none\"` so such jobs never match here";
    /// The NAT helper.
    PASST = "VM_CAPSULE_PASST", Path, Described("`passt` on `PATH`"), Execute,
        "vanilla flavour: the `passt` binary the launcher starts per job when `VM_CAPSULE_NETWORK = nat`";
    /// The libvirt network for VM-universe jobs that ask.
    LIBVIRT_NETWORK = "VM_CAPSULE_LIBVIRT_NETWORK", Text, Described("unset: jobs that ask are refused"), Execute,
        "VM universe: the libvirt network (`virsh net-list`) that `libvirt-xml` attaches to jobs that ask for a network (never a default one); unset, such jobs are refused (held), not run without it; set HTCondor's `VM_NETWORKING = true` and `VM_NETWORKING_TYPE = nat` with it, so that they match";
    /// Whole-VM checkpoints for every vanilla-flavour job.
    CHECKPOINT = "VM_CAPSULE_CHECKPOINT", Bool, Value("false"), Submit,
        "vanilla flavour: `true` checkpoints the whole VM of every routed job that does not say `+VMCapsuleCheckpoint = false` (as if each said `+VMCapsuleCheckpoint = true`); the checkpoints go to the schedd's `SPOOL` (ADMIN.md \"Whole-VM checkpoints\"); the VM universe ignores it";
    /// How often a checkpointing VM is saved.
    CHECKPOINT_INTERVAL = "VM_CAPSULE_CHECKPOINT_INTERVAL", Seconds, Value("3600"), Execute,
        "vanilla flavour: seconds between the launcher's whole-VM checkpoints of a job that asks for them; also saved when the job is evicted if its vacate time allows and HTCondor transfers the file then (`ON_EXIT_OR_EVICT` without an output list); 0: only then";
}

impl Knob {
    /// The default of a number knob, when the table gives one.
    pub fn default_number(&self) -> Option<u64> {
        match self.default {
            DefaultValue::Value(v) => v.parse().ok(),
            DefaultValue::Required | DefaultValue::Described(_) => None,
        }
    }
}

/// The knob named `name` (any case), if it is one of ours.
pub fn find(name: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}
