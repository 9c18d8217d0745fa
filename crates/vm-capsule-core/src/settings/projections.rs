//! The typed projections of [`Settings`]: what each hook and command needs, checked.

use std::path::PathBuf;
use std::time::Duration;

use super::knobs::{self as k, Knob};
use super::{Settings, SettingsError};
use crate::nocloud::AgentStart;
use crate::scratch::ScratchPrefix;

/// Which kind of job the routed copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutedUniverse {
    /// A VM-universe job (`JobUniverse = 13`): the execute node's vm-gahp boots the capsule.
    Vm,
    /// A vanilla job (`JobUniverse = 5`) whose executable, `vm-capsule run`, boots it with QEMU.
    Vanilla,
}

/// Settings of the translate hook.
#[derive(Debug, Clone)]
pub struct TranslateSettings {
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
    /// `VM_CAPSULE_WALL_TIME_LIMIT` (`None`: no limit).
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
    /// `VM_CAPSULE_CHECKPOINT`: vanilla-flavour jobs that do not say otherwise are
    /// checkpointed whole.
    pub checkpoint: bool,
}

/// What finalize needs besides its stdin.
#[derive(Debug, Clone)]
pub struct FinalizeSettings {
    /// `VM_CAPSULE_SCRATCH_DIR_PREFIX`.
    pub prefix: ScratchPrefix,
    /// Largest data disk a job can have (`VM_CAPSULE_MAX_DATA_DISK_MB`), in bytes: the bound
    /// on returned files when the routed ad does not record the staged size.
    pub max_disk_bytes: u64,
    /// `VM_CAPSULE_TEST_ANY_USER`: tests only; do not check the hook runs as the job's owner.
    pub test_any_user: bool,
}

/// What cleanup needs besides its stdin.
#[derive(Debug, Clone)]
pub struct CleanupSettings {
    /// `VM_CAPSULE_SCRATCH_DIR_PREFIX`.
    pub prefix: ScratchPrefix,
    /// `VM_CAPSULE_KEEP_FAILED`: failed job dirs kept per owner.
    pub keep_failed: usize,
    /// `VM_CAPSULE_TEST_ANY_USER`: tests only; do not check the hook runs as the job's owner.
    pub test_any_user: bool,
}

/// Which hook log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhichLog {
    /// The translate, update and cleanup hooks' (`VM_CAPSULE_TRANSLATE_LOG`).
    Translate,
    /// The finalize hook's (`VM_CAPSULE_EXIT_LOG`).
    Exit,
}

impl WhichLog {
    /// The knobs of this log: its file and its rotation size.
    pub fn knobs(self) -> (&'static Knob, &'static Knob) {
        match self {
            WhichLog::Translate => (&k::TRANSLATE_LOG, &k::MAX_TRANSLATE_LOG),
            WhichLog::Exit => (&k::EXIT_LOG, &k::MAX_EXIT_LOG),
        }
    }
}

/// Settings of a hook's log.
#[derive(Debug, Clone)]
pub struct HookLogSettings {
    /// The log's base path; each owner writes `<base>.<owner>`.
    pub base: PathBuf,
    /// Rotate at this many bytes (0: never).
    pub max_bytes: u64,
    /// Log DEBUG lines too.
    pub debug: bool,
}

/// Settings of the launcher (`vm-capsule run`) and the startd probe.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `VM_CAPSULE_QEMU`: the QEMU to run, a path or a name on `PATH` (`None`: looked for on
    /// `PATH` and where RHEL has it).
    pub qemu: Option<String>,
    /// `VM_CAPSULE_TCG_TB_MIB`: the TCG translation cache, MiB (0: QEMU's default).
    pub tcg_tb_mib: u64,
    /// `VM_CAPSULE_HOST_PATHS`: the node's read-only host paths.
    pub host_paths: Vec<String>,
    /// `VM_CAPSULE_NETWORK = nat`: jobs that ask get user-mode NAT.
    pub network: bool,
    /// `VM_CAPSULE_PASST`: the NAT helper (`None`: `passt` on `PATH`).
    pub passt: Option<String>,
    /// `VM_CAPSULE_CHECKPOINT_INTERVAL`: time between whole-VM checkpoints of a job that asks
    /// for them (`None`: only when the job is evicted).
    pub checkpoint_interval: Option<Duration>,
}

/// Settings of the libvirt domain script on an execute node.
#[derive(Debug, Clone)]
pub struct LibvirtXmlSettings {
    /// `VM_CAPSULE_LIBVIRT_DOMAIN_TYPE`: `kvm`, `qemu` or `auto`.
    pub domain_type: &'static str,
    /// `VM_CAPSULE_NODE_IMAGE_DIR`: the only place a job's overlay may have its base.
    pub node_image_dir: Option<PathBuf>,
    /// `VM_CAPSULE_LIBVIRT_OTHER_JOBS`: `refuse` or `builtin`.
    pub other_jobs: &'static str,
    /// `VM_CAPSULE_HOST_PATHS`: the node's read-only host paths.
    pub host_paths: Vec<String>,
    /// `VM_CAPSULE_LIBVIRT_NETWORK`: the libvirt network jobs that ask are attached to.
    pub network: Option<String>,
}

impl Settings {
    /// The translate hook's settings.
    ///
    /// # Errors
    /// [`SettingsError`] for a missing template or a knob with a wrong value.
    pub fn translate(&self) -> Result<TranslateSettings, SettingsError> {
        let template_root = self.path(&k::TEMPLATE).ok_or(SettingsError::Missing {
            knob: k::TEMPLATE.name,
        })?;
        let init_path = match self.raw(&k::INIT_SCRIPT_PATH) {
            Some(v) if v.eq_ignore_ascii_case("none") => None,
            Some(v) => Some(PathBuf::from(v)),
            None => Some(self.beside_exe("capsule-init")),
        };
        let agent_start = AgentStart::from_word(self.choice(&k::AGENT_START)?);
        if agent_start == AgentStart::CloudInit && init_path.is_none() {
            return Err(SettingsError::Invalid {
                knob: k::INIT_SCRIPT_PATH.name,
                value: "none".to_owned(),
                expected: format!(
                    "the agent to ship: {} = cloud-init runs the agent from the data disk",
                    k::AGENT_START.name
                ),
            });
        }
        Ok(TranslateSettings {
            node_launcher: self.absolute_path(&k::NODE_LAUNCHER)?,
            agent_start,
            node_image_dir: self.absolute_path(&k::NODE_IMAGE_DIR)?,
            classad_template: crate::template::classad_template_for(
                &template_root,
                self.path(&k::CONDOR_CLASSAD_TEMPLATE),
            ),
            template_root,
            scratch_prefix: self.path(&k::SCRATCH_DIR_PREFIX).unwrap_or_default(),
            init_path,
            label: self
                .value(&k::DATA_DISK_LABEL)
                .unwrap_or_default()
                .to_owned(),
            partition_offset: self.number(&k::DISK_PART_OFFSET)?,
            headroom_mib: self.number_or_default(&k::OUTPUT_HEADROOM_MB)?,
            default_memory_mib: self.number_or_default(&k::VM_MEMORY_MB)?,
            job_user: self.value(&k::JOB_USER).unwrap_or_default().to_owned(),
            wall_time_limit_secs: self.number(&k::WALL_TIME_LIMIT)?.filter(|s| *s > 0),
            max_data_disk_mib: self.number_or_default(&k::MAX_DATA_DISK_MB)?,
            routed_universe: match self.choice(&k::ROUTED_UNIVERSE)? {
                Some("vm") => Some(RoutedUniverse::Vm),
                Some(_) => Some(RoutedUniverse::Vanilla),
                None => None,
            },
            boot_timeout_secs: self.number_or_default(&k::BOOT_TIMEOUT)?,
            launcher_path: self
                .path(&k::LAUNCHER_PATH)
                .or_else(|| self.exe.clone())
                .unwrap_or_else(|| PathBuf::from("vm-capsule")),
            hook_timeout_secs: self.number_or_default(&k::HOOK_TIMEOUT)?,
            keep_failed: self.keep_failed()?,
            test_any_user: self.flag(&k::TEST_ANY_USER)?,
            checkpoint: self.flag(&k::CHECKPOINT)?,
        })
    }

    /// The finalize hook's settings.
    ///
    /// # Errors
    /// [`SettingsError`] for a knob with a wrong value.
    pub fn finalize(&self) -> Result<FinalizeSettings, SettingsError> {
        Ok(FinalizeSettings {
            prefix: self.scratch_prefix(),
            max_disk_bytes: self
                .number_or_default(&k::MAX_DATA_DISK_MB)?
                .saturating_mul(1 << 20),
            test_any_user: self.flag(&k::TEST_ANY_USER)?,
        })
    }

    /// The cleanup hook's settings. Finalize's knobs are checked too: with one of them wrong,
    /// finalize placed nothing, so the scratch dir still holds the job's only outputs and
    /// cleanup must keep it until the configuration is fixed.
    ///
    /// # Errors
    /// [`SettingsError`] for a knob of cleanup or finalize with a wrong value.
    pub fn cleanup(&self) -> Result<CleanupSettings, SettingsError> {
        let finalize = self.finalize()?;
        Ok(CleanupSettings {
            prefix: finalize.prefix,
            keep_failed: self.keep_failed()?,
            test_any_user: finalize.test_any_user,
        })
    }

    /// How long a hook may run: `VM_CAPSULE_HOOK_TIMEOUT`, or its default when the value is
    /// wrong (the hook's own settings then report the error; the watchdog still needs a limit).
    pub fn hook_timeout(&self) -> Duration {
        Duration::from_secs(
            self.number_or_default(&k::HOOK_TIMEOUT)
                .unwrap_or_else(|_| k::HOOK_TIMEOUT.default_number().unwrap_or_default()),
        )
    }

    /// The settings of a hook's log, and the problems with its knobs: the log opens anyway,
    /// with the defaults in their place, so that it can report them.
    pub fn hook_log(&self, which: WhichLog) -> (HookLogSettings, Vec<SettingsError>) {
        let (file, max) = which.knobs();
        let mut problems = Vec::new();
        let max_bytes = self.number_or_default(max).unwrap_or_else(|e| {
            problems.push(e);
            max.default_number().unwrap_or_default()
        });
        let debug = self.flag(&k::DEBUG).unwrap_or_else(|e| {
            problems.push(e);
            false
        });
        let settings = HookLogSettings {
            base: self.path(file).unwrap_or_default(),
            max_bytes,
            debug,
        };
        (settings, problems)
    }

    /// The launcher's and the probe's settings.
    ///
    /// # Errors
    /// [`SettingsError`] for a knob with a wrong value.
    pub fn run(&self) -> Result<RunSettings, SettingsError> {
        Ok(RunSettings {
            qemu: self.raw(&k::QEMU).map(str::to_owned),
            tcg_tb_mib: self.number_or_default(&k::TCG_TB_MIB)?,
            host_paths: self.host_paths()?,
            network: self.choice(&k::NETWORK)? == Some("nat"),
            passt: self.raw(&k::PASST).map(str::to_owned),
            checkpoint_interval: Some(self.number_or_default(&k::CHECKPOINT_INTERVAL)?)
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs),
        })
    }

    /// The libvirt domain script's settings.
    ///
    /// # Errors
    /// [`SettingsError`] for a knob with a wrong value.
    pub fn libvirt_xml(&self) -> Result<LibvirtXmlSettings, SettingsError> {
        Ok(LibvirtXmlSettings {
            domain_type: self.choice(&k::LIBVIRT_DOMAIN_TYPE)?.unwrap_or_default(),
            node_image_dir: self.path(&k::NODE_IMAGE_DIR),
            other_jobs: self.choice(&k::LIBVIRT_OTHER_JOBS)?.unwrap_or_default(),
            host_paths: self.host_paths()?,
            network: self.raw(&k::LIBVIRT_NETWORK).map(str::to_owned),
        })
    }

    /// `VM_CAPSULE_SCRATCH_DIR_PREFIX`, set or default.
    pub fn scratch_prefix(&self) -> ScratchPrefix {
        ScratchPrefix::new(&self.path(&k::SCRATCH_DIR_PREFIX).unwrap_or_default())
    }

    fn keep_failed(&self) -> Result<usize, SettingsError> {
        Ok(usize::try_from(self.number_or_default(&k::KEEP_FAILED)?).unwrap_or(usize::MAX))
    }

    /// `name` in the running program's directory (a bare name when that is unknown).
    fn beside_exe(&self, name: &str) -> PathBuf {
        self.exe
            .as_ref()
            .and_then(|p| p.parent().map(|d| d.join(name)))
            .unwrap_or_else(|| PathBuf::from(name))
    }
}

/// What the node policy does with a job it picks but cannot run in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Hold it, with the reason.
    Hold,
    /// Run it natively, with the reason in its event log.
    Native,
}

/// Settings of the node policy on an execute node.
#[derive(Debug, Clone)]
pub struct NodePolicySettings {
    /// `VM_CAPSULE_JOB`: the expression (`None`: no policy).
    pub expression: Option<String>,
    /// `VM_CAPSULE_JOB_UNFIT`.
    pub unfit: Unfit,
}

impl Settings {
    /// The node policy's settings.
    ///
    /// # Errors
    /// [`SettingsError`] for a knob with a wrong value.
    pub fn node_policy(&self) -> Result<NodePolicySettings, SettingsError> {
        Ok(NodePolicySettings {
            expression: self
                .value(&k::JOB)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            unfit: match self.choice(&k::JOB_UNFIT)? {
                Some("native") => Unfit::Native,
                _ => Unfit::Hold,
            },
        })
    }
}
