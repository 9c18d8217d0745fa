//! The translate hook: vanilla job ad in, VM-universe ad out, capsule staged in scratch.
//!
//! stdin is the route line, `------`, and the job ad (JobRouterHookMgr `hookTranslateJob`).
//! stdout must be the complete routed ad: it replaces the router's copy. Exit codes follow
//! `TranslateClient::hookExited`: 0 with output continues; non-zero makes the router yield
//! the job and retry later, so permanent problems first put the original on hold with
//! `condor_hold` (reference/hold-path.md) and transient ones just exit non-zero.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{CreateOptions, DataDisk, Image};
use capsule_manifest::{EntryKind, InputEntry, Manifest, OutputRule};
use classad::stream::parse_hook_stream;
use classad::ClassAd;

use super::log::HookLog;
use crate::config::{ConfigError, Knobs};
use crate::job::{InputItem, JobSpec};
use crate::routed::{self, Staged, VmDisk};
use crate::template::overlay::create_overlay;
use crate::template::{Flavour, Template};

/// `PIPE_BUFFER_MAX` default: the router reads at most this much of a hook's stdout.
pub const PIPE_BUFFER_MAX: usize = 10240;
/// Warn in the log when the routed ad gets this close to [`PIPE_BUFFER_MAX`].
pub const PIPE_BUFFER_WARN: usize = 8192;

/// Settings of the translate hook, from the knobs.
#[derive(Debug, Clone)]
pub struct TranslateConfig {
    /// `VM_CAPSULE_TEMPLATE`.
    pub template_root: PathBuf,
    /// `VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE`.
    pub classad_template: Option<PathBuf>,
    /// `VM_CAPSULE_SCRATCH_DIR_PREFIX`.
    pub scratch_prefix: PathBuf,
    /// `VM_CAPSULE_INIT_SCRIPT_PATH`: the guest agent put on the data disk.
    pub init_path: PathBuf,
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
    /// `VM_CAPSULE_BOOT_TIMEOUT`: seconds the launcher allows beyond the job's time limit.
    pub boot_timeout_secs: u64,
}

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
        let init_path = knobs
            .path("VM_CAPSULE_INIT_SCRIPT_PATH")
            .unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("capsule-init")))
                    .unwrap_or_else(|| PathBuf::from("capsule-init"))
            });
        Ok(TranslateConfig {
            template_root,
            classad_template: knobs.path("VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE"),
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
        })
    }
}

/// Why translation failed, and whether retrying could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranslateError {
    /// Retrying later may work (I/O trouble, a busy file system): exit non-zero.
    Transient(String),
    /// The job cannot run as it is (missing input, bad template, too big): hold it.
    Permanent {
        /// The job id, when known.
        job: Option<String>,
        /// The hold reason for the user.
        reason: String,
    },
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranslateError::Transient(m) => write!(f, "{m} (will retry)"),
            TranslateError::Permanent { reason, .. } => f.write_str(reason),
        }
    }
}

/// A successful translation.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The routed ad, as printed on stdout.
    pub stdout: String,
    /// The scratch dir holding the capsule.
    pub scratch: PathBuf,
    /// The routed ad.
    pub routed: ClassAd,
}

fn permanent(job: &JobSpec, reason: impl Into<String>) -> TranslateError {
    TranslateError::Permanent {
        job: Some(job.id()),
        reason: reason.into(),
    }
}

fn transient(what: &str, err: impl std::fmt::Display) -> TranslateError {
    TranslateError::Transient(format!("{what}: {err}"))
}

/// Translate the hook's stdin into a routed ad, staging the capsule in a new scratch dir.
///
/// # Errors
/// [`TranslateError`]; on a permanent error a partly staged scratch dir is kept (and
/// logged) for inspection, on a transient one it is removed.
pub fn translate(
    stdin: &str,
    cfg: &TranslateConfig,
    log: &mut HookLog,
) -> Result<Translated, TranslateError> {
    let ads = parse_hook_stream(stdin).map_err(|e| TranslateError::Permanent {
        job: None,
        reason: format!("cannot parse the job ad from the JobRouter: {e}"),
    })?;
    let job_ad = ads
        .iter()
        .rev()
        .find(|a| !a.new_syntax)
        .map(|a| a.ad.clone())
        .ok_or_else(|| TranslateError::Permanent {
            job: None,
            reason: "no job ad on stdin (expected the route line, ------, then the job ad)"
                .to_owned(),
        })?;
    let job = JobSpec::from_ad(&job_ad).map_err(|e| TranslateError::Permanent {
        job: None,
        reason: e.to_string(),
    })?;
    // The route's universe picks the flavour (13: VM universe, 5: vanilla); a knob overrides.
    let route_universe = ads
        .iter()
        .find(|a| a.new_syntax)
        .and_then(|a| classad::eval::evaluate_attr(&a.ad, "TargetUniverse").as_integer());
    let universe = cfg.routed_universe.unwrap_or(match route_universe {
        Some(5) => RoutedUniverse::Vanilla,
        _ => RoutedUniverse::Vm,
    });
    log.info(&format!(
        "translating job {} of {} ({:?} flavour)",
        job.id(),
        job.owner,
        universe
    ));

    let template = Template::load(&cfg.template_root, cfg.classad_template.as_deref())
        .map_err(|e| permanent(&job, format!("vm-capsule template: {}", error_chain(&e))))?;
    let inputs = plan_inputs(&job)?;

    let scratch = make_scratch(cfg, &job)?;
    match stage(
        cfg, &job, &job_ad, &template, &inputs, &scratch, universe, log,
    ) {
        Ok(translated) => Ok(translated),
        Err(err) => {
            if matches!(err, TranslateError::Transient(_)) {
                let _ = fs::remove_dir_all(&scratch);
            } else {
                log.warn(&format!(
                    "kept partly staged scratch dir {}",
                    scratch.display()
                ));
            }
            Err(err)
        }
    }
}

/// One top-level entry of `input.tar`.
#[derive(Debug, Clone)]
struct TarItem {
    source: PathBuf,
    name: String,
    is_dir: bool,
    executable: bool,
}

/// The inputs with their sizes, checked to exist.
#[derive(Debug, Clone)]
struct InputPlan {
    items: Vec<TarItem>,
    /// Bytes `input.tar` will take.
    tar_bytes: u64,
}

/// Resolve the executable, `In` and `TransferInput` into top-level sandbox entries.
fn plan_inputs(job: &JobSpec) -> Result<InputPlan, TranslateError> {
    let mut items: Vec<TarItem> = Vec::new();
    let mut push = |item: TarItem, job: &JobSpec| -> Result<(), TranslateError> {
        if items.iter().any(|i| i.name == item.name) {
            return Err(permanent(
                job,
                format!(
                    "job {}: two inputs are named {:?} in the sandbox ({}); rename one",
                    job.id(),
                    item.name,
                    item.source.display()
                ),
            ));
        }
        items.push(item);
        Ok(())
    };
    if job.transfer_executable {
        let meta = fs::metadata(&job.executable).map_err(|e| {
            permanent(
                job,
                format!(
                    "job {}: executable {} cannot be read ({e}); check the path in the submit file",
                    job.id(),
                    job.executable.display()
                ),
            )
        })?;
        if !meta.is_file() {
            return Err(permanent(
                job,
                format!(
                    "job {}: executable {} is not a file",
                    job.id(),
                    job.executable.display()
                ),
            ));
        }
        push(
            TarItem {
                source: job.executable.clone(),
                name: job.executable_name(),
                is_dir: false,
                executable: true,
            },
            job,
        )?;
    }
    if let Some(stdin) = &job.stdin {
        let in_inputs = job.inputs.iter().any(|i| i.source == stdin.path);
        if !in_inputs {
            let meta = fs::metadata(&stdin.path).map_err(|e| {
                permanent(
                    job,
                    format!(
                        "job {}: input file {} (In) cannot be read ({e})",
                        job.id(),
                        stdin.path.display()
                    ),
                )
            })?;
            if meta.is_file() {
                push(
                    TarItem {
                        source: stdin.path.clone(),
                        name: stdin.name.clone(),
                        is_dir: false,
                        executable: false,
                    },
                    job,
                )?;
            }
        }
    }
    for InputItem {
        source,
        contents_only,
    } in &job.inputs
    {
        let meta = fs::metadata(source).map_err(|e| {
            permanent(
                job,
                format!(
                    "job {}: input {} (transfer_input_files) cannot be read ({e}); fix the path or create it",
                    job.id(),
                    source.display()
                ),
            )
        })?;
        if meta.is_dir() && *contents_only {
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(|e| permanent(job, format!("input dir {}: {e}", source.display())))?
                .filter_map(Result::ok)
                .collect();
            children.sort_by_key(fs::DirEntry::file_name);
            for child in children {
                let path = child.path();
                push(
                    TarItem {
                        is_dir: path.is_dir(),
                        name: child.file_name().to_string_lossy().into_owned(),
                        source: path,
                        executable: false,
                    },
                    job,
                )?;
            }
        } else {
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    permanent(job, format!("input {} has no file name", source.display()))
                })?;
            push(
                TarItem {
                    source: source.clone(),
                    name,
                    is_dir: meta.is_dir(),
                    executable: false,
                },
                job,
            )?;
        }
    }
    let mut tar_bytes = 1024u64; // end-of-archive blocks
    for item in &items {
        tar_bytes = tar_bytes.saturating_add(tar_size(&item.source, 0));
    }
    Ok(InputPlan { items, tar_bytes })
}

/// Bytes a path takes in a tar archive: a header per entry, data rounded to 512, and long
/// names (GNU long-name entries) estimated generously.
fn tar_size(path: &Path, depth: usize) -> u64 {
    let Ok(meta) = fs::metadata(path) else {
        return 0;
    };
    let header = 1536u64;
    if meta.is_dir() {
        if depth > 64 {
            return header;
        }
        let children = fs::read_dir(path).map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| tar_size(&e.path(), depth + 1))
                .sum::<u64>()
        });
        header + children.unwrap_or(0)
    } else {
        header + meta.len().div_ceil(512) * 512
    }
}

/// Create `<prefix>/<owner>/<cluster>.<proc>.XXXXXX`, private to the owner.
fn make_scratch(cfg: &TranslateConfig, job: &JobSpec) -> Result<PathBuf, TranslateError> {
    use std::os::unix::fs::PermissionsExt;
    let owner_dir = cfg.scratch_prefix.join(&job.owner);
    if !owner_dir.is_dir() {
        fs::create_dir_all(&owner_dir).map_err(|e| {
            transient(
                &format!(
                    "cannot create scratch dir {} (VM_CAPSULE_SCRATCH_DIR_PREFIX must exist and be writable by job owners, e.g. mode 1777)",
                    owner_dir.display()
                ),
                e,
            )
        })?;
        let _ = fs::set_permissions(&owner_dir, fs::Permissions::from_mode(0o700));
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}.{}.", job.cluster, job.proc_id))
        .tempdir_in(&owner_dir)
        .map_err(|e| {
            transient(
                &format!("cannot create a scratch dir in {}", owner_dir.display()),
                e,
            )
        })?;
    Ok(dir.keep())
}

/// Build everything in `scratch` and the routed ad.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn stage(
    cfg: &TranslateConfig,
    job: &JobSpec,
    job_ad: &ClassAd,
    template: &Template,
    inputs: &InputPlan,
    scratch: &Path,
    universe: RoutedUniverse,
    log: &mut HookLog,
) -> Result<Translated, TranslateError> {
    // The guest agent travels on the data disk.
    let init_size = fs::metadata(&cfg.init_path)
        .map_err(|e| {
            permanent(
                job,
                format!(
                    "vm-capsule guest agent {} is missing ({e}); set VM_CAPSULE_INIT_SCRIPT_PATH",
                    cfg.init_path.display()
                ),
            )
        })?
        .len();

    let manifest = build_manifest(cfg, job, inputs);
    let manifest_json = manifest
        .to_json()
        .map_err(|e| permanent(job, format!("job {}: {e}", job.id())))?;
    let job_ad_text = classad::print::ad_to_hook_string(job_ad)
        .unwrap_or_else(|_| classad::print::ad_to_new_string(job_ad));

    // Size: inputs + agent + manifest, plus room for outputs, plus FAT overhead.
    let payload = inputs.tar_bytes
        + init_size
        + u64::try_from(manifest_json.len() + job_ad_text.len()).unwrap_or(0);
    let headroom = job
        .request_disk_kib
        .map_or(cfg.headroom_mib << 20, |kib| kib.saturating_mul(1024));
    let mib = 1u64 << 20;
    let needed = payload
        .saturating_add(headroom)
        .saturating_add(payload / 32 + 4 * mib)
        .div_ceil(mib)
        .max(64);
    if needed > cfg.max_data_disk_mib {
        return Err(permanent(
            job,
            format!(
                "job {}: needs a {needed} MiB data disk (inputs {} MiB + output room {} MiB), more than VM_CAPSULE_MAX_DATA_DISK_MB = {}; lower request_disk or transfer less",
                job.id(),
                inputs.tar_bytes >> 20,
                headroom >> 20,
                cfg.max_data_disk_mib
            ),
        ));
    }

    let data_name = template.data_disk.path.file_name().map_or_else(
        || "data.img".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let data_path = scratch.join(&data_name);
    let offset = cfg
        .partition_offset
        .unwrap_or(template.data_partition_offset);
    let opts = CreateOptions::new()
        .size(needed * mib)
        .format(template.data_disk.format)
        .partition_offset(offset)
        .label(cfg.label.clone());
    let disk = DataDisk::create(&data_path, &opts).map_err(|e| {
        transient(
            &format!("cannot create data disk {}", data_path.display()),
            e,
        )
    })?;
    let io_err = |what: &str, e: capsule_disk::Error| {
        transient(&format!("{what} on {}", data_path.display()), e)
    };
    disk.put_file(
        capsule_manifest::CAPSULE_JSON,
        &mut manifest_json.as_slice(),
    )
    .map_err(|e| io_err("writing capsule.json", e))?;
    disk.put_file(capsule_manifest::JOB_AD, &mut job_ad_text.as_bytes())
        .map_err(|e| io_err("writing job.ad", e))?;
    let mut agent = fs::File::open(&cfg.init_path)
        .map_err(|e| transient(&format!("cannot read {}", cfg.init_path.display()), e))?;
    disk.put_file(capsule_manifest::CAPSULE_INIT, &mut agent)
        .map_err(|e| io_err("writing capsule-init", e))?;
    write_input_tar(&disk, inputs).map_err(|e| {
        permanent(
            job,
            format!("job {}: cannot pack the inputs: {e}", job.id()),
        )
    })?;
    disk.finish().map_err(|e| io_err("finishing", e))?;

    let staged = stage_vm(cfg, job, template, scratch, &data_name)?;
    let vm_ad = routed::build(job, job_ad, template, &staged);
    let routed = match universe {
        RoutedUniverse::Vm => vm_ad,
        RoutedUniverse::Vanilla => {
            // The launcher boots the VM described by the VM ad, from its own sandbox.
            let description = super::ad_lines(&vm_ad)
                .map_err(|e| permanent(job, format!("job {}: capsule.ad: {e}", job.id())))?;
            fs::write(scratch.join(routed::CAPSULE_AD), description)
                .map_err(|e| transient("cannot write capsule.ad", e))?;
            // Without a job time limit the launcher still stops a guest that hangs.
            let timeout = cfg.wall_time_limit_secs.unwrap_or(24 * 3600) + cfg.boot_timeout_secs;
            routed::build_vanilla(job, job_ad, &staged, &cfg.launcher_path, timeout)
        }
    };
    let stdout = super::ad_lines(&routed)
        .map_err(|e| permanent(job, format!("job {}: routed ad: {e}", job.id())))?;
    if stdout.len() > PIPE_BUFFER_MAX {
        return Err(permanent(
            job,
            format!(
                "job {}: the routed ad is {} bytes, over the JobRouter's PIPE_BUFFER_MAX of {PIPE_BUFFER_MAX}; raise JOB_ROUTER.PIPE_BUFFER_MAX",
                job.id(),
                stdout.len()
            ),
        ));
    }
    if stdout.len() > PIPE_BUFFER_WARN {
        log.warn(&format!(
            "routed ad for job {} is {} bytes, close to PIPE_BUFFER_MAX ({PIPE_BUFFER_MAX}); consider raising JOB_ROUTER.PIPE_BUFFER_MAX",
            job.id(),
            stdout.len()
        ));
    }
    log.info(&format!(
        "job {} staged in {} ({} MiB {} data disk)",
        job.id(),
        scratch.display(),
        needed,
        template.data_disk.format.name()
    ));
    Ok(Translated {
        stdout,
        scratch: scratch.to_owned(),
        routed,
    })
}

fn build_manifest(cfg: &TranslateConfig, job: &JobSpec, inputs: &InputPlan) -> Manifest {
    let (executable, argv0) = if job.transfer_executable {
        let name = job.executable_name();
        (name.clone(), name)
    } else {
        let path = job.executable.display().to_string();
        (path.clone(), path)
    };
    let mut argv = vec![argv0];
    argv.extend(job.args.iter().cloned());
    let mut m = Manifest::new(executable, argv);
    m.env = job.env.iter().cloned().collect();
    m.stdin = job.stdin.as_ref().map(|s| s.name.clone());
    m.user.clone_from(&cfg.job_user);
    m.wall_time_limit_secs = cfg.wall_time_limit_secs;
    m.output = match &job.outputs {
        Some(paths) => OutputRule::Explicit {
            paths: paths.clone(),
        },
        None => OutputRule::Default,
    };
    m.inputs = inputs
        .items
        .iter()
        .map(|i| InputEntry {
            path: i.name.clone(),
            kind: if i.is_dir {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
        })
        .collect();
    m
}

/// Stream `input.tar` onto the disk: a thread writes the archive into a pipe that the disk
/// reads, so no temporary copy of the inputs is made.
fn write_input_tar(disk: &DataDisk, inputs: &InputPlan) -> io::Result<()> {
    let (reader, writer) = io::pipe()?;
    let items = inputs.items.clone();
    let builder = std::thread::spawn(move || -> io::Result<()> {
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, writer));
        tar.mode(tar::HeaderMode::Complete);
        for item in &items {
            if item.is_dir {
                tar.append_dir_all(&item.name, &item.source)?;
            } else if item.executable {
                // HTCondor makes the transferred executable executable.
                let mut file = fs::File::open(&item.source)?;
                let mut header = tar::Header::new_gnu();
                header.set_metadata(&file.metadata()?);
                header.set_mode(0o755);
                tar.append_data(&mut header, &item.name, &mut file)?;
            } else {
                tar.append_path_with_name(&item.source, &item.name)?;
            }
        }
        tar.into_inner()?.flush()
    });
    let mut reader = reader;
    let put = disk.put_file(capsule_manifest::INPUT_TAR, &mut reader);
    drop(reader);
    let built = builder
        .join()
        .map_err(|_| io::Error::other("input.tar writer panicked"))?;
    built?;
    put.map(|_| ()).map_err(io::Error::other)
}

/// Link the template's OS disks into scratch and describe the VM.
fn stage_vm(
    cfg: &TranslateConfig,
    job: &JobSpec,
    template: &Template,
    scratch: &Path,
    data_name: &str,
) -> Result<Staged, TranslateError> {
    let _ = cfg;
    let mut disks = Vec::new();
    let mut transfer = Vec::new();
    for disk in &template.os_disks {
        let info = Image::open(&disk.path, capsule_disk::Access::ReadOnly)
            .map(|img| img.info())
            .map_err(|e| {
                permanent(
                    job,
                    format!("template OS disk {}: {e}", disk.path.display()),
                )
            })?;
        // The base and everything it is made of (extents, backing files) travel read-only.
        for file in &info.files {
            let name = link_into(file, scratch).map_err(|e| {
                transient(
                    &format!("cannot link template file {} into scratch", file.display()),
                    e,
                )
            })?;
            transfer.push(name);
        }
        let base_name = file_name(&disk.path);
        match template.flavour {
            Flavour::Kvm | Flavour::Xen => {
                // A small writable overlay keeps the base untouched on the execute node.
                let overlay = format!("{}.overlay.qcow2", stem(&base_name));
                create_overlay(
                    &scratch.join(&overlay),
                    &base_name,
                    disk.format.name(),
                    info.virtual_size,
                )
                .map_err(|e| transient(&format!("cannot create overlay {overlay}"), e))?;
                transfer.push(overlay.clone());
                disks.push(VmDisk {
                    file: overlay,
                    device: disk.device.clone(),
                    perm: "w",
                    format: "qcow2",
                });
            }
            Flavour::Vmware => disks.push(VmDisk {
                file: base_name,
                device: disk.device.clone(),
                perm: "w",
                format: "vmdk",
            }),
        }
    }
    let data_format = template.data_disk.format.name();
    disks.push(VmDisk {
        file: data_name.to_owned(),
        device: template.data_disk.device.clone(),
        perm: "w",
        format: data_format,
    });
    transfer.push(data_name.to_owned());
    let vmx = match (&template.flavour, &template.vmx) {
        (Flavour::Vmware, Some(vmx)) => {
            let name = file_name(vmx);
            write_vmx(vmx, &scratch.join(&name), data_name)
                .map_err(|e| transient(&format!("cannot write {name}"), e))?;
            transfer.push(name.clone());
            Some(name)
        }
        _ => None,
    };
    let kernel = match &template.kernel {
        Some((k, i, cmdline)) => {
            let kn = link_into(k, scratch).map_err(|e| transient("cannot link the kernel", e))?;
            let inn = link_into(i, scratch).map_err(|e| transient("cannot link the initrd", e))?;
            transfer.push(kn.clone());
            transfer.push(inn.clone());
            Some((kn, inn, cmdline.clone()))
        }
        None => None,
    };
    let template_memory = match classad::eval::evaluate_attr(&template.vm_attrs, "JobVMMemory") {
        classad::Value::Integer(m) => u64::try_from(m).ok(),
        _ => None,
    };
    let memory_mib = template_memory
        .unwrap_or(cfg.default_memory_mib)
        .max(job.request_memory_mib.map_or(0, |m| m + 64));
    let vcpus = job.request_cpus.unwrap_or(1).max(1);
    Ok(Staged {
        scratch: scratch.display().to_string(),
        disks,
        transfer,
        data_disk: data_name.to_owned(),
        memory_mib,
        vcpus,
        vmx,
        kernel,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// Hard-link `file` into `dir` under its own name (never a copy); a symlink where hard links
/// cannot cross file systems. Returns the name.
fn link_into(file: &Path, dir: &Path) -> io::Result<String> {
    let name = file_name(file);
    let dest = dir.join(&name);
    if dest.exists() {
        return Ok(name);
    }
    match fs::hard_link(file, &dest) {
        Ok(()) => Ok(name),
        Err(_) => {
            let absolute = fs::canonicalize(file)?;
            std::os::unix::fs::symlink(absolute, &dest)?;
            Ok(name)
        }
    }
}

/// Copy the template's `.vmx`, marking the data disk independent-persistent so VMware writes
/// it in place (not into a snapshot delta) while OS disks stay snapshotted.
fn write_vmx(src: &Path, dest: &Path, data_name: &str) -> io::Result<()> {
    let text = fs::read_to_string(src)?;
    let mut out = String::new();
    let mut data_key = None;
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            let value = value.trim().trim_matches('"');
            if key.ends_with(".fileName") && value == data_name {
                data_key = key.strip_suffix(".fileName").map(str::to_owned);
            }
            if data_key
                .as_deref()
                .is_some_and(|k| key == format!("{k}.mode"))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(k) = data_key {
        out.push_str(&format!("{k}.mode = \"independent-persistent\"\n"));
    }
    fs::write(dest, out)
}

/// Put the original job on hold with `reason` (HTCondor appends "(by user <owner>)").
/// Returns false when `condor_hold` is not available or fails.
pub fn hold_original(job_id: &str, reason: &str, log: &mut HookLog) -> bool {
    // condor_hold takes the reason as one argument; keep it to printable text.
    let clean: String = reason
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(1000)
        .collect();
    match Command::new("condor_hold")
        .args([
            "-reason",
            &format!("vm-capsule: {clean}"),
            "-subcode",
            "1",
            job_id,
        ])
        .output()
    {
        Ok(out) if out.status.success() => {
            log.info(&format!("held job {job_id}: {clean}"));
            true
        }
        Ok(out) => {
            log.error(&format!(
                "condor_hold {job_id} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            false
        }
        Err(e) => {
            log.warn(&format!("cannot run condor_hold for job {job_id}: {e}"));
            false
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
