//! Every decision of a translation, made before anything is written (check, then do): the manifest, the data disk's size and layout, the VM, the routed ad and its size. A
//! job that cannot run is refused here, so a refusal leaves nothing behind.

use std::path::{Path, PathBuf};

use capsule_manifest::{
    EntryKind, Executable, InputEntry, Manifest, OutputPath, OutputRule, PathError, RelPath,
    CAPSULE_JSON,
};
use classad::ClassAd;

use super::config::PIPE_BUFFER_MAX;
use super::error::{job_problem, TranslateError};
use super::request::TranslateRequest;
use vm_capsule_core::capsule::{AgentSource, CapsuleRecipe, DiskRecipe, InputPlan};
use vm_capsule_core::job::JobSpec;
use vm_capsule_core::nocloud::AgentStart;
use vm_capsule_core::returned::place::OutputRules;
use vm_capsule_core::routed::{self, Staged, VmDisk};
use vm_capsule_core::settings::{RoutedUniverse, TranslateSettings};
use vm_capsule_core::template::{Flavour, Template};

const MIB: u64 = 1 << 20;

/// What the agent and launcher binaries weigh (read before planning).
#[derive(Debug, Clone, Copy, Default)]
pub struct Binaries {
    /// The guest agent put on the data disk, if any.
    pub agent_bytes: Option<u64>,
    /// The launcher a vanilla-flavour job ships (0: the node's is used).
    pub launcher_bytes: u64,
    /// The agent is the node's (`VM_CAPSULE_NODE_LAUNCHER`): it is on the data disk but not
    /// in the sandbox.
    pub agent_on_node: bool,
}

/// Everything a translation will do, decided.
#[derive(Debug, Clone)]
pub struct CapsulePlan {
    /// The job.
    pub job: JobSpec,
    /// The original ad.
    pub job_ad: ClassAd,
    /// Which flavour the routed job is.
    pub universe: RoutedUniverse,
    /// `capsule.json`.
    pub manifest_json: Vec<u8>,
    /// `job.ad`.
    pub job_ad_text: String,
    /// The agent to put on the data disk.
    pub agent: Option<PathBuf>,
    /// The inputs that go into `input.tar`.
    pub inputs: InputPlan,
    /// The data disk.
    pub disk: DiskPlan,
    /// The template it runs on.
    pub template: Template,
    /// VM memory, MiB.
    pub memory_mib: u64,
    /// VM CPUs.
    pub vcpus: u64,
    /// Bytes the routed job asks the execute node for (`RequestDisk`, KiB).
    pub request_disk_kib: u64,
    /// The launcher a vanilla-flavour job runs.
    pub launcher: PathBuf,
    /// `launcher` is the one installed on the execute nodes (`VM_CAPSULE_NODE_LAUNCHER`).
    pub launcher_on_node: bool,
    /// The launcher's time limit, seconds (none: as long as HTCondor lets the job run).
    pub launcher_timeout: Option<u64>,
    /// OS disks staged on the execute nodes (`VM_CAPSULE_NODE_IMAGE_DIR`), in disk order.
    pub node_bases: Vec<vm_capsule_core::node_image::NodeBase>,
    /// Files that make the data disk a cloud-init NoCloud seed (`VM_CAPSULE_AGENT_START`).
    pub seed: Vec<(&'static str, String)>,
    /// The job dir's name in the owner dir, chosen here: the routed ad names it.
    pub job_dir_name: String,
    /// The routed ad, built once for that job dir.
    pub routed: RoutedAd,
    /// The vanilla launcher checkpoints the whole VM (`VMCapsuleCheckpoint`,
    /// `VM_CAPSULE_CHECKPOINT`).
    pub checkpoint: bool,
}

/// The routed ad for the job dir the plan chose.
#[derive(Debug, Clone, Default)]
pub struct RoutedAd {
    /// The ad.
    pub ad: ClassAd,
    /// As printed for the JobRouter.
    pub stdout: String,
    /// For the vanilla flavour, the VM description its launcher boots (`capsule.ad`).
    pub capsule_ad: Option<String>,
}

/// The data disk to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// File name (in the job dir, or in the vanilla launcher's sandbox).
    pub name: String,
    /// Layout and room.
    pub recipe: DiskRecipe,
    /// Virtual size in bytes, when translate makes it (VM universe); the vanilla launcher
    /// sizes it from the inputs HTCondor brought.
    pub bytes: Option<u64>,
}

/// The universe the routed job goes to: the route's (13: VM universe, 5: vanilla), unless
/// `VM_CAPSULE_ROUTED_UNIVERSE` says.
pub fn universe(request: &TranslateRequest, cfg: &TranslateSettings) -> RoutedUniverse {
    cfg.routed_universe.unwrap_or(match request.route_universe {
        Some(5) => RoutedUniverse::Vanilla,
        _ => RoutedUniverse::Vm,
    })
}

/// Decide everything for `request` on `template`.
///
/// # Errors
/// [`TranslateError::Job`] when the job cannot run as it is (too big, outputs it cannot name,
/// a routed ad too large for the router), [`TranslateError::Admin`] for a missing agent.
pub fn plan(
    request: &TranslateRequest,
    cfg: &TranslateSettings,
    template: &Template,
    inputs: InputPlan,
    binaries: Binaries,
) -> Result<CapsulePlan, TranslateError> {
    let job = &request.job;
    let id = job.id();
    // Outputs the guest could never be asked for are the job's problem, found now.
    OutputRules::for_job(job).map_err(|e| job_problem(&id, e.to_string()))?;
    let universe = universe(request, cfg);
    let checkpoint = super::checkpoint::wanted(job, cfg, universe)?;
    let manifest_json = build_manifest(cfg, job, &inputs)
        .and_then(|m| m.to_json())
        .map_err(|e| job_problem(&id, e.to_string()))?;
    let job_ad_text = classad::print::ad_to_hook_string(&request.ad)
        .unwrap_or_else(|_| classad::print::ad_to_new_string(&request.ad));
    let text_bytes = u64::try_from(manifest_json.len() + job_ad_text.len()).unwrap_or(u64::MAX);
    let payload = inputs
        .tar_bytes
        .saturating_add(binaries.agent_bytes.unwrap_or(0))
        .saturating_add(text_bytes);
    let disk = disk_plan(cfg, job, template, universe, payload, inputs.tar_bytes)?;
    if universe == RoutedUniverse::Vanilla {
        super::sizing::check_vanilla_disk(job, &disk, payload)?;
    }
    let node_bases = node_bases(cfg, template)?;
    let template_memory = match classad::eval::evaluate_attr(&template.vm_attrs, "JobVMMemory") {
        classad::Value::Integer(m) => u64::try_from(m).ok(),
        _ => None,
    };
    let mut plan = CapsulePlan {
        job: job.clone(),
        job_ad: request.ad.clone(),
        universe,
        request_disk_kib: super::sizing::request_disk_kib(
            job,
            template,
            &disk,
            binaries,
            payload,
            &node_bases,
        ),
        manifest_json,
        job_ad_text,
        agent: cfg.init_path.clone(),
        inputs,
        disk,
        template: template.clone(),
        memory_mib: template_memory
            .unwrap_or(cfg.default_memory_mib)
            .max(job.request_memory_mib.map_or(0, |m| m + 64)),
        vcpus: job.request_cpus.unwrap_or(1).max(1),
        launcher: cfg
            .node_launcher
            .clone()
            .unwrap_or_else(|| cfg.launcher_path.clone()),
        launcher_on_node: cfg.node_launcher.is_some(),
        launcher_timeout: cfg
            .wall_time_limit_secs
            .map(|limit| limit + cfg.boot_timeout_secs),
        seed: vm_capsule_core::nocloud::seed_files(cfg.agent_start, &cfg.job_user, &id),
        node_bases,
        job_dir_name: vm_capsule_core::scratch::new_job_dir_name(&id),
        routed: RoutedAd::default(),
        checkpoint,
    };
    if universe == RoutedUniverse::Vanilla {
        plan.check_sandbox_names()?;
    }
    let scratch = cfg.scratch_prefix.join(&job.owner).join(&plan.job_dir_name);
    plan.routed = plan.routed(&scratch)?;
    plan.check_pipe()?;
    Ok(plan)
}

/// Where each OS disk lives on the execute nodes, when `VM_CAPSULE_NODE_IMAGE_DIR` says.
fn node_bases(
    cfg: &TranslateSettings,
    template: &Template,
) -> Result<Vec<vm_capsule_core::node_image::NodeBase>, TranslateError> {
    let mut bases = Vec::new();
    for disk in &template.os_disks {
        let overlay = overlay_name(&file_name(&disk.path));
        let base = vm_capsule_core::node_image::plan(
            cfg.node_image_dir.as_deref(),
            template,
            disk,
            &overlay,
        )
        .map_err(|e| TranslateError::Admin(format!("vm-capsule template: {e}")))?;
        bases.extend(base);
    }
    Ok(bases)
}

/// The data disk: the template's layout, sized here for the VM universe (the vanilla
/// launcher sizes it on the node from the inputs HTCondor brought).
fn disk_plan(
    cfg: &TranslateSettings,
    job: &JobSpec,
    template: &Template,
    universe: RoutedUniverse,
    payload: u64,
    input_bytes: u64,
) -> Result<DiskPlan, TranslateError> {
    let id = job.id();
    let recipe = DiskRecipe {
        format: template.data_disk.format,
        offset: cfg
            .partition_offset
            .unwrap_or(template.data_partition_offset),
        label: vm_capsule_core::nocloud::data_disk_label(cfg.agent_start, &cfg.label).to_owned(),
        request_bytes: job.request_disk_kib.map(|kib| kib.saturating_mul(1024)),
        headroom_bytes: cfg.headroom_mib.saturating_mul(MIB),
        max_bytes: cfg.max_data_disk_mib.saturating_mul(MIB),
    };
    let bytes = match universe {
        RoutedUniverse::Vm => Some(
            recipe
                .size(payload, input_bytes)
                .map_err(|e| job_problem(&id, e.to_string()))?,
        ),
        RoutedUniverse::Vanilla => None,
    };
    Ok(DiskPlan {
        name: template.data_disk.path.file_name().map_or_else(
            || "data.img".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        ),
        bytes,
        recipe,
    })
}

impl CapsulePlan {
    /// An input that would arrive in the vanilla sandbox under a name the capsule uses there
    /// is the job's problem.
    fn check_sandbox_names(&self) -> Result<(), TranslateError> {
        let id = self.job.id();
        let mut reserved = self.reserved_names();
        // A launcher that restores would take it for the VM's checkpoint.
        reserved.push(routed::CHECKPOINT_FILE.to_owned());
        match self.inputs.items.iter().find(|i| reserved.contains(&i.name)) {
            Some(item) => Err(job_problem(
                &id,
                format!(
                    "input {} arrives in the sandbox as {:?}, a name the VM capsule uses there; rename it",
                    item.source.display(),
                    item.name
                ),
            )),
            None => Ok(()),
        }
    }

    /// The routed ad must fit the router's pipe.
    fn check_pipe(&self) -> Result<(), TranslateError> {
        let id = self.job.id();
        let stdout = &self.routed.stdout;
        if stdout.len() > PIPE_BUFFER_MAX {
            return Err(job_problem(
                &id,
                format!(
                    "the routed ad is {} bytes, over the JobRouter's PIPE_BUFFER_MAX of {PIPE_BUFFER_MAX}; ask the admin to raise JOB_ROUTER.PIPE_BUFFER_MAX",
                    stdout.len()
                ),
            ));
        }
        Ok(())
    }
}

impl CapsulePlan {
    /// What will be in job dir `scratch`, for the routed ad.
    pub fn staged(&self, scratch: &Path) -> Staged {
        let mut disks = Vec::new();
        let mut transfer = Vec::new();
        for disk in &self.template.os_disks {
            let base = file_name(&disk.path);
            if !self
                .node_bases
                .iter()
                .any(|b| b.overlay == overlay_name(&base))
            {
                transfer.extend(disk.files.iter().map(|f| file_name(f)));
            }
            match self.template.flavour {
                Flavour::Kvm | Flavour::Xen => {
                    let overlay = overlay_name(&base);
                    transfer.push(overlay.clone());
                    disks.push(VmDisk {
                        file: overlay,
                        device: disk.device.clone(),
                        perm: "w",
                        format: "qcow2",
                    });
                }
                Flavour::Vmware => disks.push(VmDisk {
                    file: base,
                    device: disk.device.clone(),
                    perm: "w",
                    format: "vmdk",
                }),
            }
        }
        disks.push(VmDisk {
            file: self.disk.name.clone(),
            device: self.template.data_disk.device.clone(),
            perm: "w",
            format: self.disk.recipe.format.name(),
        });
        transfer.push(self.disk.name.clone());
        let vmx = match (&self.template.flavour, &self.template.vmx) {
            (Flavour::Vmware, Some(vmx)) => {
                let name = file_name(vmx);
                transfer.push(name.clone());
                Some(name)
            }
            _ => None,
        };
        let boot = self.template.boot.as_ref().map(|b| b.map(|p| file_name(p)));
        if let Some(b) = &boot {
            transfer.push(b.kernel.clone());
            transfer.extend(b.initrd.clone());
        }
        Staged {
            scratch: scratch.display().to_string(),
            disks,
            transfer,
            data_disk: self.disk.name.clone(),
            data_disk_format: self.disk.recipe.format.name(),
            data_disk_bytes: self.disk.bytes,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            vmx,
            boot,
            request_disk_kib: self.request_disk_kib,
            node_bases: self.node_bases.clone(),
        }
    }

    /// The routed ad for job dir `scratch`, as printed, and for the vanilla flavour the VM
    /// description its launcher boots (`capsule.ad`).
    ///
    /// # Errors
    /// [`TranslateError::Job`] when an attribute cannot be printed in the old syntax.
    fn routed(&self, scratch: &Path) -> Result<RoutedAd, TranslateError> {
        let id = self.job.id();
        let staged = self.staged(scratch);
        let mut vm_ad = routed::build(&self.job, &self.job_ad, &self.template, &staged);
        let need_host_paths = |ad: &mut ClassAd| {
            vm_capsule_core::host_paths::require(ad, &self.job_ad).map_err(|e| job_problem(&id, e))
        };
        need_host_paths(&mut vm_ad)?;
        let print = |ad: &ClassAd, what: &str| {
            crate::ad_lines(ad).map_err(|e| job_problem(&id, format!("{what}: {e}")))
        };
        match self.universe {
            RoutedUniverse::Vm => {
                let stdout = print(&vm_ad, "routed ad")?;
                Ok(RoutedAd {
                    ad: vm_ad,
                    stdout,
                    capsule_ad: None,
                })
            }
            RoutedUniverse::Vanilla => {
                let mut vm_ad = vm_ad;
                self.recipe_attrs(&mut vm_ad);
                if self.checkpoint {
                    // The launcher reads its orders from the capsule ad, and whether an exit
                    // with the checkpoint code in the guest is the job's own checkpoint.
                    vm_ad.insert(routed::ATTR_CHECKPOINT, classad::Expr::boolean(true));
                    if let Some(code) = routed::job_checkpoint_exit_code(&self.job_ad) {
                        vm_ad.insert(
                            routed::ATTR_JOB_CHECKPOINT_CODE,
                            classad::Expr::integer(code),
                        );
                    }
                }
                let capsule = print(&vm_ad, "capsule.ad")?;
                let ad = routed::build_vanilla(
                    &self.job,
                    &self.job_ad,
                    &staged,
                    &routed::VanillaInputs {
                        launcher: &self.launcher,
                        // The node's launcher takes the agent installed beside it.
                        agent: self.agent.as_deref().filter(|_| !self.launcher_on_node),
                        timeout_secs: self.launcher_timeout,
                        launcher_on_node: self.launcher_on_node,
                        checkpoint: self.checkpoint,
                    },
                );
                let mut ad = ad;
                need_host_paths(&mut ad)?;
                let stdout = print(&ad, "routed ad")?;
                Ok(RoutedAd {
                    ad,
                    stdout,
                    capsule_ad: Some(capsule),
                })
            }
        }
    }
}

impl CapsulePlan {
    /// What the vanilla launcher needs to make the data disk on the node, in its VM ad.
    fn recipe_attrs(&self, ad: &mut ClassAd) {
        let agent = match &self.agent {
            Some(_) if self.launcher_on_node => AgentSource::Node,
            Some(agent) => AgentSource::Sandbox(file_name(agent)),
            None => AgentSource::Image,
        };
        CapsuleRecipe {
            data_disk: self.disk.name.clone(),
            disk: self.disk.recipe.clone(),
            agent,
            agent_start: if self.seed.is_empty() {
                AgentStart::Image
            } else {
                AgentStart::CloudInit
            },
            job_id: self.job.id(),
        }
        .to_attrs(ad);
    }

    /// Sandbox names the vanilla flavour's capsule takes, which an input may not.
    pub fn reserved_names(&self) -> Vec<String> {
        let mut names: Vec<String> = routed::VANILLA_FILES
            .iter()
            .map(|n| (*n).to_owned())
            .collect();
        names.push(self.disk.name.clone());
        names.push(file_name(&self.launcher));
        names.extend(self.agent.as_deref().map(file_name));
        names.extend(self.staged(Path::new("/")).transfer);
        names
    }
}

/// The qcow2 overlay made for OS disk `base`.
pub fn overlay_name(base: &str) -> String {
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    format!("{stem}.overlay.qcow2")
}

/// The last component of `path`.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// `capsule.json` for the job.
///
/// # Errors
/// [`capsule_manifest::Error::Invalid`] naming the field whose path is not clean.
pub fn build_manifest(
    cfg: &TranslateSettings,
    job: &JobSpec,
    inputs: &InputPlan,
) -> Result<Manifest, capsule_manifest::Error> {
    let invalid = |field: &str, value: &str, e: PathError| {
        capsule_manifest::Error::invalid(CAPSULE_JSON, field, value, e.to_string())
    };
    let (executable, argv0) = if job.transfer_executable {
        let name = job.executable_name();
        (name.clone(), name)
    } else {
        let path = job.executable.display().to_string();
        (path.clone(), path)
    };
    let executable =
        Executable::parse(&executable).map_err(|e| invalid("executable", &executable, e))?;
    let mut argv = vec![argv0];
    argv.extend(job.args.iter().cloned());
    let mut m = Manifest::new(executable, argv);
    m.env = job.env.iter().cloned().collect();
    m.stdin = match &job.stdin {
        Some(s) => Some(RelPath::parse(&s.name).map_err(|e| invalid("stdin", &s.name, e))?),
        None => None,
    };
    m.user.clone_from(&cfg.job_user);
    m.wall_time_limit_secs = cfg.wall_time_limit_secs;
    m.output = match &job.outputs {
        Some(paths) => OutputRule::Explicit {
            paths: paths
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    OutputPath::parse(p).map_err(|e| invalid(&format!("output.paths[{i}]"), p, e))
                })
                .collect::<Result<_, _>>()?,
        },
        None => OutputRule::Default,
    };
    m.inputs = inputs
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            Ok(InputEntry {
                path: RelPath::parse(&item.name)
                    .map_err(|e| invalid(&format!("inputs[{i}].path"), &item.name, e))?,
                kind: if item.is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
            })
        })
        .collect::<Result<_, capsule_manifest::Error>>()?;
    Ok(m)
}
