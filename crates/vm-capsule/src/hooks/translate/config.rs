//! Settings of the translate hook, read from the knobs.

use std::path::PathBuf;

use crate::config::{ConfigError, Knobs};
use crate::nocloud::{self, AgentStart};
use crate::routed::{self};

/// `PIPE_BUFFER_MAX` default: the router reads at most this much of a hook's stdout.
pub const PIPE_BUFFER_MAX: usize = 10240;
/// Warn in the log when the routed ad gets this close to [`PIPE_BUFFER_MAX`].
pub const PIPE_BUFFER_WARN: usize = 8192;

/// Settings of the translate hook, from the knobs.
#[derive(Debug, Clone)]
pub struct TranslateConfig {
    /// `VM_CAPSULE_TEMPLATE`.
    pub template_root: PathBuf,
    /// `VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE`, else the template's `classad-template.ad`.
    pub classad_template: Option<PathBuf>,
    /// `VM_CAPSULE_SCRATCH_DIR_PREFIX`.
    pub scratch_prefix: PathBuf,
    /// `VM_CAPSULE_INIT_SCRIPT_PATH`: the guest agent put on the data disk; `None` (the knob
    /// set to `none`) when the template's guest carries its own agent.
    pub init_path: Option<PathBuf>,
    /// `VM_CAPSULE_DATA_DISK_LABEL`.
    pub label: String,
    /// `VM_CAPSULE_DISK_PART_OFFSET` (else the template's).
    pub partition_offset: Option<u64>,
    /// `VM_CAPSULE_OUTPUT_HEADROOM_MB`.
    pub headroom_mib: u64,
    /// `VM_CAPSULE_VM_MEMORY_MB`.
    pub default_memory_mib: u64,
    /// `VM_CAPSULE_JOB_USER`.
    pub job_user: String,
    /// `VM_CAPSULE_WALL_TIME_LIMIT` (0: none).
    pub wall_time_limit_secs: Option<u64>,
    /// `VM_CAPSULE_MAX_DATA_DISK_MB`.
    pub max_data_disk_mib: u64,
    /// `VM_CAPSULE_ROUTED_UNIVERSE` (`vm` or `vanilla`): overrides the route's universe.
    pub routed_universe: Option<RoutedUniverse>,
    /// `VM_CAPSULE_LAUNCHER_PATH`: the launcher a vanilla-flavour job runs.
    pub launcher_path: PathBuf,
    /// `VM_CAPSULE_NODE_LAUNCHER`: the launcher's path on the execute nodes; set, vanilla-flavour
    /// jobs run it there and ship neither it nor the agent.
    pub node_launcher: Option<PathBuf>,
    /// `VM_CAPSULE_BOOT_TIMEOUT`: seconds the launcher allows beyond the job's time limit.
    pub boot_timeout_secs: u64,
    /// `VM_CAPSULE_AGENT_START`: whether the data disk is also a cloud-init NoCloud seed.
    pub agent_start: AgentStart,
    /// `VM_CAPSULE_NODE_IMAGE_DIR`: where the OS disks are on the execute nodes (`None`: they
    /// travel with each job).
    pub node_image_dir: Option<PathBuf>,
    /// `VM_CAPSULE_HOOK_TIMEOUT`: seconds a hook may run before it gives up.
    pub hook_timeout_secs: u64,
    /// `VM_CAPSULE_KEEP_FAILED`: failed job dirs kept per owner for inspection.
    pub keep_failed: usize,
    /// `VM_CAPSULE_TEST_ANY_USER`: tests only; do not check the hook runs as the job's owner.
    pub test_any_user: bool,
}

/// `VM_CAPSULE_HOOK_TIMEOUT` default, seconds.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 3600;
/// `VM_CAPSULE_KEEP_FAILED` default.
pub const DEFAULT_KEEP_FAILED: usize = 10;

/// Which kind of job the routed copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutedUniverse {
    /// A VM-universe job (`JobUniverse = 13`): the execute node's vm-gahp boots the capsule.
    Vm,
    /// A vanilla job (`JobUniverse = 5`) whose executable, `vm-capsule run`, boots it with QEMU.
    Vanilla,
}

impl TranslateConfig {
    /// Read the settings from knobs.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing template or malformed numbers.
    pub fn from_knobs(knobs: &Knobs) -> Result<TranslateConfig, ConfigError> {
        let template_root = knobs
            .path("VM_CAPSULE_TEMPLATE")
            .ok_or(ConfigError::Missing {
                knob: "VM_CAPSULE_TEMPLATE",
            })?;
        let init_path = match knobs.get("VM_CAPSULE_INIT_SCRIPT_PATH") {
            Some(v) if v.eq_ignore_ascii_case("none") => None,
            Some(v) => Some(PathBuf::from(v)),
            None => Some(
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("capsule-init")))
                    .unwrap_or_else(|| PathBuf::from("capsule-init")),
            ),
        };
        let agent_start = AgentStart::from_knob(knobs.get(nocloud::KNOB))?;
        if agent_start == AgentStart::CloudInit && init_path.is_none() {
            return Err(ConfigError::Invalid {
                knob: "VM_CAPSULE_INIT_SCRIPT_PATH",
                value: "none".to_owned(),
                expected: "the agent to ship: VM_CAPSULE_AGENT_START = cloud-init runs the agent from the data disk",
            });
        }
        let node_image_dir = knobs.path(crate::node_image::KNOB);
        if let Some(dir) = node_image_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(ConfigError::Invalid {
                knob: crate::node_image::KNOB,
                value: dir.display().to_string(),
                expected: "an absolute path (the directory on the execute nodes)",
            });
        }
        let node_launcher = knobs.path("VM_CAPSULE_NODE_LAUNCHER");
        if let Some(path) = node_launcher.as_ref().filter(|p| !p.is_absolute()) {
            return Err(ConfigError::Invalid {
                knob: "VM_CAPSULE_NODE_LAUNCHER",
                value: path.display().to_string(),
                expected: "an absolute path (vm-capsule on the execute nodes)",
            });
        }
        Ok(TranslateConfig {
            node_launcher,
            agent_start,
            node_image_dir,
            classad_template: crate::template::classad_template_for(
                &template_root,
                knobs.path("VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE"),
            ),
            template_root,
            scratch_prefix: knobs
                .path("VM_CAPSULE_SCRATCH_DIR_PREFIX")
                .unwrap_or_else(|| PathBuf::from("/tmp/vm-capsule")),
            init_path,
            label: knobs
                .get("VM_CAPSULE_DATA_DISK_LABEL")
                .unwrap_or("CONDORDATA")
                .to_owned(),
            partition_offset: knobs.number("VM_CAPSULE_DISK_PART_OFFSET")?,
            headroom_mib: knobs
                .number("VM_CAPSULE_OUTPUT_HEADROOM_MB")?
                .unwrap_or(256),
            default_memory_mib: knobs.number("VM_CAPSULE_VM_MEMORY_MB")?.unwrap_or(512),
            job_user: knobs
                .get("VM_CAPSULE_JOB_USER")
                .unwrap_or("condor")
                .to_owned(),
            wall_time_limit_secs: knobs
                .number("VM_CAPSULE_WALL_TIME_LIMIT")?
                .filter(|s| *s > 0),
            max_data_disk_mib: knobs
                .number("VM_CAPSULE_MAX_DATA_DISK_MB")?
                .unwrap_or(64 * 1024),
            routed_universe: match knobs.get("VM_CAPSULE_ROUTED_UNIVERSE") {
                None => None,
                Some(v) if v.eq_ignore_ascii_case("vm") => Some(RoutedUniverse::Vm),
                Some(v) if v.eq_ignore_ascii_case("vanilla") => Some(RoutedUniverse::Vanilla),
                Some(v) => {
                    return Err(ConfigError::Invalid {
                        knob: "VM_CAPSULE_ROUTED_UNIVERSE",
                        value: v.to_owned(),
                        expected: "vm or vanilla",
                    })
                }
            },
            boot_timeout_secs: knobs
                .number("VM_CAPSULE_BOOT_TIMEOUT")?
                .unwrap_or(routed::BOOT_MARGIN_SECS),
            launcher_path: knobs
                .path("VM_CAPSULE_LAUNCHER_PATH")
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("vm-capsule")),
            hook_timeout_secs: knobs
                .number("VM_CAPSULE_HOOK_TIMEOUT")?
                .unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS),
            keep_failed: knobs
                .number("VM_CAPSULE_KEEP_FAILED")?
                .map_or(DEFAULT_KEEP_FAILED, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            test_any_user: knobs.flag("VM_CAPSULE_TEST_ANY_USER")?,
        })
    }
}
