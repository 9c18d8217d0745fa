//! One agent run: manifest -> work dir -> job -> outputs -> streams, output.tar, result.json.
//!
//! Every failure after the data source is open still ends in a `result.json` that says what
//! went wrong: a guest must never leave the execute slot without an answer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use capsule_manifest::{
    AgentInfo, Executable, JobResult, Manifest, Outcome, ProblemKind, CAPSULE_JSON, DEFAULT_STDERR,
    DEFAULT_STDOUT, INPUT_TAR, OUTPUT_TAR, RESULT_JSON, RESULT_SCHEMA_VERSION,
};

use crate::collect::{self, Collected};
use crate::runner::{self, Finished, JobSpec};
use crate::source::{DataSource, DirSource};
use crate::users::{self, Account};
use crate::workdir;

/// Where the data-disk files are.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A mounted or plain directory.
    Dir(PathBuf),
    /// A block device holding the data disk (FAT read in user space).
    Device(PathBuf),
    /// An image file (raw, VMDK or qcow2) holding the data disk.
    Image(PathBuf),
    /// The block device whose FAT volume has this label (resolved to a `Device` before the
    /// agent runs; see `launch::locate`).
    Label(String),
}

/// Validated options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data disk.
    pub source: SourceSpec,
    /// Fresh scratch space on a native file system (work dir and staged streams live here).
    pub scratch: PathBuf,
    /// Directory holding `passwd` and `group`.
    pub etc: PathBuf,
    /// Run the job as the invoking user instead of the manifest's user.
    pub as_current_user: bool,
    /// Why the node's read-only host paths could not be mounted: the job does not start.
    pub host_paths_problem: Option<String>,
    /// In a VM: bring its network up (when it has a NIC) before the job starts.
    pub network: bool,
}

/// What the run produced.
#[derive(Debug)]
pub struct Report {
    /// The result written to the data disk.
    pub result: JobResult,
    /// When the job was seen to end (for the poweroff overhead).
    pub job_end: Option<Instant>,
}

/// Scratch layout: `work/` is the job's work dir, `io/` holds the staged streams and tar.
struct Scratch {
    work: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    output_tar: PathBuf,
}

impl Scratch {
    fn create(root: &Path) -> Result<Self> {
        // Absolute, because the job's program path is resolved after chdir into the work dir.
        let root = &std::path::absolute(root)
            .with_context(|| format!("cannot resolve scratch {}", root.display()))?;
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create scratch {}", root.display()))?;
        let work = root.join("work");
        let io = root.join("io");
        for dir in [&work, &io] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    format!(
                        "cannot create {} (capsule-init needs a fresh scratch dir)",
                        dir.display()
                    )
                })?;
        }
        Ok(Scratch {
            work,
            stdout: io.join("stdout"),
            stderr: io.join("stderr"),
            output_tar: io.join("output.tar"),
        })
    }
}

/// Run the whole agent once. `Err` only when nothing could be written to the data disk.
pub fn run(opts: &Options, t0: Instant) -> Result<Report> {
    let mut source = open_source(&opts.source)?;
    crate::log!("data disk: {}", source.describe());
    let mut agent = AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        user: String::new(),
        uid: 0,
        setup_secs: 0.0,
    };
    let manifest = read_manifest(source.as_mut());
    let scratch = Scratch::create(&opts.scratch);

    let (mut result, job_end) = match (&manifest, &scratch) {
        (Err(e), _) | (Ok(_), Err(e)) => (
            JobResult::not_started(format!("{e:#}"), agent.clone()),
            None,
        ),
        (Ok(m), Ok(s)) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepare_and_run(opts, m, s, source.as_mut(), &mut agent, t0)
        }))
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "capsule-init panicked (a bug); see the console log"
            ))
        }) {
            Err(e) => (
                JobResult::not_started(format!("{e:#}"), agent.clone()),
                None,
            ),
            Ok((finished, collected)) => {
                let end = finished.ended_at;
                (make_result(&finished, collected, agent.clone()), Some(end))
            }
        },
    };
    for p in &result.problems {
        crate::log!("{}", p.message);
    }
    if let Some(end) = job_end {
        crate::log!(
            "outputs collected {:.1} ms after job end",
            end.elapsed().as_secs_f64() * 1e3
        );
    }

    // Streams and outputs first, result.json last: its presence means everything else is there.
    let (out_name, err_name) = manifest
        .as_ref()
        .map_or((DEFAULT_STDOUT, DEFAULT_STDERR), |m| {
            (m.stdout.as_str(), m.stderr.as_str())
        });
    let staged = scratch.as_ref().ok();
    let files = [
        (OUTPUT_TAR, staged.map(|s| s.output_tar.as_path())),
        (err_name, staged.map(|s| s.stderr.as_path())),
        (out_name, staged.map(|s| s.stdout.as_path())),
    ];
    put_outputs(source.as_mut(), &files, &mut result);
    if let Err(e) = source.sync() {
        result.add_problem(ProblemKind::Agent, format!("{e:#}"));
    }
    let json = result.to_json().context("cannot encode result.json")?;
    if let Err(e) = source.put(RESULT_JSON, &mut &json[..]) {
        if !is_no_space(&e) {
            return Err(e).context("cannot write result.json");
        }
        // The outputs fit but left no room for result.json. Without it the host knows
        // nothing, so give their space back: an answer without outputs beats no answer.
        for (name, _) in &files {
            if let Err(e) = source.put(name, &mut io::empty()) {
                result.add_problem(ProblemKind::Agent, format!("cannot empty {name}: {e:#}"));
            }
        }
        result.outputs.clear();
        let msg = format!(
            "result.json did not fit on the data disk after the outputs ({}): \
             they were emptied to make room; increase request_disk",
            free_text(source.free_bytes())
        );
        crate::log!("{msg}");
        result.add_problem(ProblemKind::OutputsDidNotFit, msg);
        source.sync().context("cannot sync the data disk")?;
        let json = result.to_json().context("cannot encode result.json")?;
        source
            .put(RESULT_JSON, &mut &json[..])
            .context("cannot write result.json")?;
    }
    source.finish().context("cannot flush the data disk")?;
    Ok(Report { result, job_end })
}

fn open_source(spec: &SourceSpec) -> Result<Box<dyn DataSource>> {
    match spec {
        SourceSpec::Dir(dir) => Ok(Box::new(DirSource::open(dir)?)),
        SourceSpec::Device(path) | SourceSpec::Image(path) => crate::disk::open(path),
        SourceSpec::Label(label) => {
            anyhow::bail!("the data disk labelled {label} was not located (a bug)")
        }
    }
}

/// Put the staged output.tar and streams on the data disk (a missing one as an empty file).
///
/// output.tar goes first: it is what the job is for. A file that does not fit must neither
/// pass for a whole one nor keep the room result.json needs: output.tar is then left empty (a
/// cut tar is useless), a stream keeps the head that fits with [`RESERVE`] to spare. A full
/// disk is reported once, with the room there was, so the user knows what to ask for.
fn put_outputs(source: &mut dyn DataSource, files: &[(&str, Option<&Path>)], r: &mut JobResult) {
    let mut errors: Vec<(ProblemKind, String)> = Vec::new();
    let mut too_big = Vec::new();
    let mut free_at_first_failure = None;
    for &(name, path) in files {
        let file = path.and_then(|p| File::open(p).ok());
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        let mut reader: Box<dyn Read> = match file {
            Some(f) => Box::new(f),
            None => Box::new(io::empty()),
        };
        let Err(e) = source.put(name, &mut reader) else {
            continue;
        };
        if name == OUTPUT_TAR {
            // The list describes output.tar, which is now empty.
            r.outputs.clear();
        }
        // Empty first: a mounted disk keeps what a failed write got in.
        if let Err(e) = source.put(name, &mut io::empty()) {
            errors.push((
                ProblemKind::Agent,
                format!("cannot empty {name} after a failed write: {e:#}"),
            ));
            continue;
        }
        if !is_no_space(&e) {
            errors.push((
                ProblemKind::Agent,
                format!("cannot write {name} to the data disk: {e:#}"),
            ));
            continue;
        }
        let free = source.free_bytes();
        free_at_first_failure = free_at_first_failure.or(Some(free));
        let room = free.map_or(0, |f| f.saturating_sub(RESERVE));
        let kept = match path {
            Some(p) if name != OUTPUT_TAR && room > 0 => put_head(source, name, p, room),
            _ => 0,
        };
        too_big.push(if kept > 0 {
            format!(
                "{name} needs {} MiB, kept its first {} MiB",
                size.div_ceil(MIB),
                kept / MIB
            )
        } else {
            format!("{name} needs {} MiB, left empty", size.div_ceil(MIB))
        });
    }
    if !too_big.is_empty() {
        let free = free_text(free_at_first_failure.flatten());
        errors.insert(
            0,
            (
                ProblemKind::OutputsDidNotFit,
                format!(
                    "outputs did not fit on the data disk ({free}; {}): increase request_disk",
                    too_big.join(", ")
                ),
            ),
        );
    }
    for (kind, e) in errors {
        crate::log!("{e}");
        r.add_problem(kind, e);
    }
}

/// Write the first `room` bytes of `path` as `name`; returns the bytes kept (0: none, the file
/// left empty).
fn put_head(source: &mut dyn DataSource, name: &str, path: &Path, room: u64) -> u64 {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    match source.put(name, &mut file.take(room)) {
        Ok(n) => n,
        Err(_) => {
            let _ = source.put(name, &mut io::empty());
            0
        }
    }
}

/// Room left free when a stream is cut to fit: result.json and a few directory entries need
/// far less (and if they do not fit, [`run`] empties the outputs to make room).
const RESERVE: u64 = MIB;

/// Bytes in a MiB, for messages.
const MIB: u64 = 1 << 20;

/// "N MiB free" for a message about a full data disk.
fn free_text(free: Option<u64>) -> String {
    free.map_or_else(
        || "free space unknown".to_owned(),
        |b| format!("{} MiB free", b / MIB),
    )
}

/// Whether `e` comes from a full disk: capsule-disk's typed volume-full error, or a full file
/// system or quota (`ENOSPC`, `EDQUOT`) under a mounted disk.
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<capsule_disk::Error>()
            .is_some_and(capsule_disk::Error::is_volume_full)
            || c.downcast_ref::<io::Error>()
                .is_some_and(capsule_disk::is_storage_full)
    })
}

fn read_manifest(source: &mut dyn DataSource) -> Result<Manifest> {
    let reader = source
        .open(CAPSULE_JSON)?
        .with_context(|| format!("the data disk has no {CAPSULE_JSON}"))?;
    Ok(Manifest::from_reader(reader)?)
}

/// The account the job runs as (`None`: as the agent's own user, `--as-current-user`).
fn resolve_account(opts: &Options, m: &Manifest, agent: &mut AgentInfo) -> Result<Option<Account>> {
    Ok(if opts.as_current_user {
        agent.uid = nix::unistd::getuid().as_raw();
        agent.user = std::env::var("USER").unwrap_or_else(|_| format!("uid {}", agent.uid));
        None
    } else {
        let a = users::resolve(&opts.etc, &m.user, m.fallback_user.as_deref())?;
        agent.uid = a.uid;
        agent.user.clone_from(&a.name);
        Some(a)
    })
}

/// The job's work dir: inputs unpacked and checked, handed to the job's account, and the
/// catalog of what it holds (for the default output rule).
fn prepare_work(
    m: &Manifest,
    s: &Scratch,
    source: &mut dyn DataSource,
    account: Option<&Account>,
    t0: Instant,
) -> Result<workdir::Catalog> {
    match source.open(INPUT_TAR)? {
        Some(reader) => workdir::unpack(reader, &s.work)?,
        None if m.inputs.is_empty() => {}
        None => anyhow::bail!("the data disk has no {INPUT_TAR} but capsule.json lists inputs"),
    }
    workdir::check_inputs(&s.work, &m.inputs)?;
    if let Some(a) = account {
        workdir::chown_tree(&s.work, a.uid, a.gid)?;
    }
    let catalog = workdir::catalog(&s.work)?;
    crate::log!(
        "work dir ready after {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );

    Ok(catalog)
}

/// Run the job while its streams are copied to the host as they grow (the files stay
/// authoritative: the data disk brings them whole).
fn run_streamed(spec: JobSpec<'_>, s: &Scratch) -> Result<Finished> {
    let live = crate::live::start(&s.stdout, &s.stderr);
    let finished = runner::run(spec);
    if let Some(live) = live {
        live.stop();
    }
    finished
}

/// A job that could not be started, with a hint at the usual causes.
fn with_start_hint(e: anyhow::Error) -> anyhow::Error {
    let hint = match e
        .root_cause()
        .downcast_ref::<io::Error>()
        .map(io::Error::kind)
    {
        Some(io::ErrorKind::NotFound) => {
            "; hint: is the executable in input.tar (or in the guest image)?"
        }
        Some(io::ErrorKind::PermissionDenied) => {
            "; hint: the executable needs mode 0755 in input.tar"
        }
        _ => "",
    };
    anyhow::anyhow!("{e:#}{hint}")
}

/// Everything from the manifest to the collected outputs. `Err` = the job did not start.
fn prepare_and_run(
    opts: &Options,
    m: &Manifest,
    s: &Scratch,
    source: &mut dyn DataSource,
    agent: &mut AgentInfo,
    t0: Instant,
) -> Result<(Finished, Result<Collected>)> {
    if let Some(problem) = &opts.host_paths_problem {
        anyhow::bail!("{problem}");
    }
    let account = resolve_account(opts, m, agent)?;
    let catalog = prepare_work(m, s, source, account.as_ref(), t0)?;
    // What came in, so a checkpoint exit can say what the job removed of it.
    let came_in = match m.checkpoint_exit() {
        Some(_) => workdir::top_names(&s.work)?,
        None => Vec::new(),
    };

    let stdin = match &m.stdin {
        Some(rel) => Some(
            workdir::open_no_follow(&s.work, rel.as_str())
                .with_context(|| format!("stdin file {rel:?} (is it in {INPUT_TAR}?)"))?,
        ),
        None => None,
    };
    let create = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .with_context(|| format!("cannot create {}", p.display()))
    };
    let mut env = m.env.clone();
    env.entry("_CONDOR_SCRATCH_DIR".to_owned())
        .or_insert_with(|| s.work.to_string_lossy().into_owned());
    let program = match &m.executable {
        Executable::Image(abs) => PathBuf::from(abs),
        Executable::WorkDir(rel) => s.work.join(rel),
    };
    let spec = JobSpec {
        program,
        argv: &m.argv,
        env,
        cwd: &s.work,
        stdin,
        stdout: create(&s.stdout)?,
        stderr: create(&s.stderr)?,
        account: account.as_ref(),
        limit: m.wall_time_limit_secs.map(Duration::from_secs),
    };
    if opts.network {
        crate::network::bring_up().context("network")?;
    }
    crate::log!(
        "starting {:?} as {} (uid {})",
        m.executable,
        agent.user,
        agent.uid
    );
    let finished = run_streamed(spec, s).map_err(with_start_hint)?;
    agent.setup_secs = finished.exec_at.duration_since(t0).as_secs_f64();
    crate::log!(
        "job ended: {:?}{}",
        finished.outcome,
        if finished.timed_out {
            " (time limit)"
        } else {
            ""
        }
    );

    // A self-checkpointing job's checkpoint exit: HTCondor restarts it in the same sandbox,
    // which must then hold every file it wrote, whatever its output rule.
    let checkpointed = m
        .checkpoint_exit()
        .is_some_and(|exit| exit.is(&finished.outcome));
    let rule = if checkpointed {
        crate::log!("checkpoint exit: returning every file the job wrote");
        collect::checkpoint_rule(&s.work, &catalog).unwrap_or_else(|e| {
            crate::log!("cannot list the work dir ({e:#}); returning the job's outputs only");
            m.output.clone()
        })
    } else {
        m.output.clone()
    };
    let collected = File::create(&s.output_tar)
        .with_context(|| format!("cannot create {}", s.output_tar.display()))
        .and_then(|f| {
            collect::collect(
                &s.work,
                &rule,
                &catalog,
                m.executable.as_str(),
                account.as_ref().map(|a| a.uid),
                io::BufWriter::new(f),
            )
        })
        .map(|mut c| {
            if checkpointed {
                c.note_removed(&s.work, &came_in);
            }
            c
        });
    if collected.is_err() {
        // A tar cut short (the scratch disk filled up, say) must not reach the data disk as if
        // it were whole: without the staged file an empty output.tar is written.
        let _ = fs::remove_file(&s.output_tar);
    }
    Ok((finished, collected))
}

fn make_result(f: &Finished, collected: Result<Collected>, agent: AgentInfo) -> JobResult {
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let mut r = JobResult {
        schema_version: RESULT_SCHEMA_VERSION,
        outcome: f.outcome,
        timed_out: f.timed_out,
        problems: Vec::new(),
        wall_time_secs: f.ended_at.duration_since(f.exec_at).as_secs_f64(),
        user_cpu_secs: f.user_cpu_secs,
        system_cpu_secs: f.system_cpu_secs,
        peak_rss_kib: f.peak_rss_kib,
        started_at_unix: unix(f.started_unix),
        ended_at_unix: unix(f.ended_unix),
        outputs: Vec::new(),
        missing_outputs: Vec::new(),
        warnings: Vec::new(),
        agent,
        removed: Vec::new(),
    };
    if f.timed_out {
        r.add_problem(
            ProblemKind::TimeLimit,
            "the job exceeded its wall-time limit and was killed",
        );
    }
    let escaped_warning = (f.escaped_killed > 0).then(|| {
        format!(
            "killed {} process(es) of uid {} that had left the job's process group",
            f.escaped_killed, r.agent.uid
        )
    });
    match collected {
        Ok(c) => {
            r.outputs = c.outputs;
            r.missing_outputs = c.missing;
            r.warnings = c.warnings;
            r.removed = c.removed;
        }
        Err(e) => {
            r.add_problem(
                ProblemKind::Collect,
                format!("the job ran but its outputs could not be collected: {e:#}"),
            );
        }
    }
    r.warnings.extend(escaped_warning);
    if crate::control::killed_by_host() {
        r.warnings.push(
            "the job was killed (SIGKILL to its process group) as the host's vacate time ran out"
                .to_owned(),
        );
    }
    debug_assert!(r.outcome != Outcome::NotStarted);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full file system and an exhausted quota are both "no room", however they are
    /// reported: by errno (a mounted disk) or by kind.
    #[test]
    fn no_space_covers_a_full_disk_and_a_full_quota() {
        for errno in [nix::libc::ENOSPC, nix::libc::EDQUOT] {
            let e = anyhow::Error::new(io::Error::from_raw_os_error(errno))
                .context("writing output.tar");
            assert!(is_no_space(&e), "errno {errno}");
        }
        for kind in [io::ErrorKind::StorageFull, io::ErrorKind::QuotaExceeded] {
            assert!(
                is_no_space(&anyhow::Error::new(io::Error::from(kind))),
                "{kind:?}"
            );
        }
        let other = anyhow::Error::new(io::Error::from_raw_os_error(nix::libc::EIO));
        assert!(!is_no_space(&other));
    }
}
