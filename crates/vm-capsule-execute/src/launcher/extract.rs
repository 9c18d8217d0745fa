//! Extracting a job's results after its VM stopped, for the vanilla flavour's launcher: turn
//! the returned data disk into what a vanilla job leaves behind in its sandbox (its outputs,
//! its stdout and stderr) and the job's exit status, so HTCondor's own file transfer and exit
//! handling do the rest.

use std::fs;
use std::io::Write;
use std::path::Path;

use capsule_disk::{Access, DataDisk};
use capsule_manifest::CheckpointExit;

use vm_capsule_core::returned::place::OutputRules;
use vm_capsule_core::returned::{self, Delivery, ExitStatus, StreamSink};
use vm_capsule_core::temp_record::TempRecord;
use vm_capsule_core::usage::JobUsage;

use super::live::LiveOutput;

fn publish_usage(
    sandbox: &Path,
    chirp_config: Option<&Path>,
    usage: &JobUsage,
) -> Result<(), crate::chirp::ChirpError> {
    let mut chirp = crate::chirp::Chirp::from_sandbox(sandbox, chirp_config)?;
    for (name, value) in usage.chirp_values() {
        if let Err(refused) = chirp.set_job_attr(name, &value) {
            // A job that did not ask for the I/O proxy (the node policy's: the starter set
            // its proxy up before the prepare-job hook) has only delayed updates, for names
            // starting with `Chirp`.
            chirp
                .set_job_attr_delayed(&format!("{DELAYED_PREFIX}{name}"), &value)
                .map_err(|_| refused)?;
        }
    }
    Ok(())
}

/// The prefix HTCondor's starter allows for delayed updates by default
/// (`CHIRP_DELAYED_UPDATE_PREFIX = Chirp*`).
pub const DELAYED_PREFIX: &str = "Chirp";

/// How the launcher must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LauncherExit {
    /// Exit with the job's code.
    Code(u8),
    /// Die by the job's signal.
    Signal(u8),
    /// The job could not start in the guest (exit 127).
    NotStarted(String),
    /// The capsule failed: no result, unreadable disk (exit 125).
    Failed(String),
}

/// The capsule's own files in the sandbox: never outputs.
#[derive(Debug, Clone, Default)]
pub struct CapsuleFiles {
    /// Every one of them (plain names).
    pub all: Vec<String>,
    /// Those the launcher made here (the data disk, overlays, the console log): made again
    /// at every start.
    pub made: Vec<String>,
    /// How the job checkpoints: after that exit HTCondor restarts the launcher in this
    /// sandbox, so the files HTCondor transferred stay.
    pub checkpoint_exit: Option<CheckpointExit>,
}

/// Unpack the job's results from `data_disk` in `sandbox` and remove the capsule's files
/// (so they are not taken for outputs), but for a checkpoint exit only those the launcher
/// made. Streams go to `out` and `err` (after what `live` wrote of them while the job ran);
/// the job's usage to the starter, over Chirp (`chirp_config`: the job's
/// `_CONDOR_CHIRP_CONFIG`).
pub fn finish_in_sandbox(
    sandbox: &Path,
    chirp_config: Option<&Path>,
    data_disk: &str,
    files: &CapsuleFiles,
    live: &mut LiveOutput,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> LauncherExit {
    let mut removed_by_the_job = Vec::new();
    let exit = extract(
        sandbox,
        chirp_config,
        data_disk,
        files,
        live,
        (out, err),
        &mut removed_by_the_job,
    );
    let checkpointed = is_checkpoint(&exit, files.checkpoint_exit);
    let remove = if checkpointed {
        // What the job removed before it checkpointed is not there natively when it restarts.
        super::sandbox::remove_deleted(sandbox, &files.all, &removed_by_the_job);
        &files.made
    } else {
        &files.all
    };
    for name in remove {
        // Only plain names: these come from our own capsule description.
        if !name.contains('/') {
            let _ = fs::remove_file(sandbox.join(name));
        }
    }
    exit
}

/// Whether the launcher ending as `exit` is the checkpoint exit `want`, as the starter will
/// see it (a death by the signal with a core dump is made a failure in [`finish_in_sandbox`],
/// so what is left is the starter's own rule).
pub(crate) fn is_checkpoint(exit: &LauncherExit, want: Option<CheckpointExit>) -> bool {
    match (exit, want) {
        (LauncherExit::Code(code), Some(CheckpointExit::Code(want)))
        | (LauncherExit::Signal(code), Some(CheckpointExit::Signal(want))) => *code == want,
        _ => false,
    }
}

fn extract(
    sandbox: &Path,
    chirp_config: Option<&Path>,
    data_disk: &str,
    files: &CapsuleFiles,
    live: &mut LiveOutput,
    (out, err): (&mut dyn Write, &mut dyn Write),
    removed_by_the_job: &mut Vec<String>,
) -> LauncherExit {
    let disk = match DataDisk::open(&sandbox.join(data_disk), Access::ReadOnly) {
        Ok(d) => d,
        Err(e) => {
            return LauncherExit::Failed(format!("the data disk {data_disk} is unreadable: {e}"))
        }
    };
    // Outputs keep their paths in the sandbox; HTCondor applies the user's
    // transfer_output_files and remaps from there. The capsule's own files and the starter's
    // names are never taken.
    let (mut out, mut err) = live.finish(out, err);
    let delivery = Delivery {
        stdout: StreamSink::Copy(&mut out),
        stderr: StreamSink::Copy(&mut err),
        outputs: Ok(OutputRules::sandbox(sandbox, &files.all)),
        tag: "launcher",
        // No watchdog here: nothing removes a temporary file on a timeout.
        temps: &TempRecord::new(),
    };
    let mut exit = match returned::read(&disk, delivery) {
        Ok(exit) => exit,
        Err(e) => return LauncherExit::Failed(e.to_string()),
    };
    *removed_by_the_job = std::mem::take(&mut exit.removed);
    // The disk's copy wins over what the guest sent while the job ran.
    let settled = [
        out.settle(|| disk.open_file(capsule_manifest::DEFAULT_STDOUT).ok()),
        err.settle(|| disk.open_file(capsule_manifest::DEFAULT_STDERR).ok()),
    ];
    if let Some(Err(why)) = settled.into_iter().find(Result::is_err) {
        return LauncherExit::Failed(why);
    }
    // HTCondor's own usage figures are the launcher's (boot and emulation included): publish
    // what the guest measured of the job itself. Best effort: a job without an I/O proxy, or
    // a starter that does not answer, loses only these attributes.
    let _ = publish_usage(sandbox, chirp_config, &exit.usage);
    if exit.placement.has_problems() {
        return LauncherExit::Failed(exit.placement.summary());
    }
    if let Some(problem) = exit.agent_problem {
        // Outputs that did not fit on the data disk, say: the job's files are incomplete.
        return LauncherExit::Failed(format!("the guest agent reported: {problem}"));
    }
    // A missing transfer_output_files entry is HTCondor's to hold the job for, as for any
    // vanilla job: the sandbox simply lacks it.
    match exit.status {
        ExitStatus::Exited(code) => LauncherExit::Code(code),
        // The starter compares the whole wait status: this is no checkpoint for it, and a
        // launcher dying by the signal could not show the core dump.
        ExitStatus::Signaled {
            signal,
            core_dumped: true,
        } if files.checkpoint_exit == Some(CheckpointExit::Signal(signal)) => {
            LauncherExit::Failed(format!(
                "the job died by signal {signal}, its SuccessCheckpointExitSignal, but dumped core: \
                 HTCondor does not take that for a checkpoint and the launcher cannot end the \
                 same way; raise no core dump at a checkpoint (ulimit -c 0 in the job)"
            ))
        }
        ExitStatus::Signaled { signal, .. } => LauncherExit::Signal(signal),
        ExitStatus::NotStarted(why) => LauncherExit::NotStarted(why),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runner::ControlChannel;
    use capsule_disk::CreateOptions;
    use capsule_manifest::control::{output_frame, Stream};
    use std::os::fd::AsFd;

    /// A returned data disk: the job exited 0 with `stdout` and `stderr`.
    fn returned_disk(path: &Path, stdout: &[u8], stderr: &[u8]) {
        returned_disk_of(path, stdout, stderr, r#"{"kind":"exited","code":0}"#);
    }

    /// A returned data disk: the job ended as `outcome` (JSON) with `stdout` and `stderr`.
    fn returned_disk_of(path: &Path, stdout: &[u8], stderr: &[u8], outcome: &str) {
        let disk = DataDisk::create(path, &CreateOptions::new().size(16 << 20)).unwrap();
        disk.put_file(capsule_manifest::DEFAULT_STDOUT, &mut &stdout[..])
            .unwrap();
        disk.put_file(capsule_manifest::DEFAULT_STDERR, &mut &stderr[..])
            .unwrap();
        let result = format!(
            r#"{{"schema_version":1,"outcome":{outcome},"timed_out":false,"error":null,"wall_time_secs":3.0,"user_cpu_secs":0.0,"system_cpu_secs":0.0,"peak_rss_kib":1,"started_at_unix":1.0,"ended_at_unix":4.0,"outputs":[],"missing_outputs":[],"warnings":[],"agent":{{"version":"0.1.0","user":"condor","uid":1000,"setup_secs":0.0}}}}"#
        );
        disk.put_file(capsule_manifest::RESULT_JSON, &mut result.as_bytes())
            .unwrap();
        disk.finish().unwrap();
    }

    /// A guest that sends, while the job runs, bytes its data disk does not hold (a lie on
    /// stdout, a true prefix on stderr): the slot's stdout ends as the disk's copy after what
    /// it held before this run, and stderr gets only what was missing.
    #[test]
    fn a_lying_guest_leaves_the_disks_streams_in_the_slot() {
        let d = tempfile::tempdir().unwrap();
        returned_disk(&d.path().join("data.img"), b"line 1\nline 2\n", b"warn 1\n");
        let (out_path, err_path) = (
            d.path().join("_condor_stdout"),
            d.path().join("_condor_stderr"),
        );
        fs::write(&out_path, b"from the run before\n").unwrap();
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .unwrap()
        };
        let (out, err) = (open(&out_path), open(&err_path));
        let mut live = LiveOutput::onto(out.as_fd(), err.as_fd());
        let mut channel = ControlChannel::new().unwrap();
        let mut guest = std::os::unix::net::UnixStream::from(channel.take_guest_end().unwrap());
        guest
            .write_all(&output_frame(
                Stream::Stdout,
                b"rm -rf ~ # you were hacked\n",
            ))
            .unwrap();
        guest
            .write_all(&output_frame(Stream::Stderr, b"warn"))
            .unwrap();
        live.deliver(channel.poll());
        assert_eq!(
            fs::read(&out_path).unwrap(),
            b"from the run before\nrm -rf ~ # you were hacked\n"
        );
        let files = CapsuleFiles {
            all: vec!["data.img".to_owned()],
            made: vec!["data.img".to_owned()],
            checkpoint_exit: None,
        };
        let exit = finish_in_sandbox(
            d.path(),
            None,
            "data.img",
            &files,
            &mut live,
            &mut std::io::sink(),
            &mut std::io::sink(),
        );
        assert_eq!(exit, LauncherExit::Code(0));
        assert_eq!(
            fs::read(&out_path).unwrap(),
            b"from the run before\nline 1\nline 2\n"
        );
        assert_eq!(fs::read(&err_path).unwrap(), b"warn 1\n");
    }

    /// A job that checkpoints by a signal and dies by it: the capsule's files HTCondor
    /// transferred stay for the restart, and the launcher dies by the same signal. With a core
    /// dump it is no checkpoint for the starter, and the launcher cannot die with one: it
    /// says so and fails, the capsule's files gone.
    #[test]
    fn a_death_by_the_checkpoint_signal_keeps_the_capsule_s_files() {
        let killed =
            |core: bool| format!(r#"{{"kind":"signaled","signal":10,"core_dumped":{core}}}"#);
        for core in [false, true] {
            let d = tempfile::tempdir().unwrap();
            returned_disk_of(&d.path().join("data.img"), b"", b"", &killed(core));
            std::fs::write(d.path().join("vmlinuz"), "kernel").unwrap();
            let files = CapsuleFiles {
                all: vec!["data.img".to_owned(), "vmlinuz".to_owned()],
                made: vec!["data.img".to_owned()],
                checkpoint_exit: Some(CheckpointExit::Signal(10)),
            };
            let exit = finish_in_sandbox(
                d.path(),
                None,
                "data.img",
                &files,
                &mut LiveOutput::off(),
                &mut std::io::sink(),
                &mut std::io::sink(),
            );
            assert!(!d.path().join("data.img").exists());
            if core {
                let LauncherExit::Failed(why) = exit else {
                    panic!("{exit:?}")
                };
                assert!(why.contains("signal 10") && why.contains("core"), "{why}");
                assert!(!d.path().join("vmlinuz").exists());
            } else {
                assert_eq!(exit, LauncherExit::Signal(10));
                assert!(d.path().join("vmlinuz").exists(), "removed at a checkpoint");
            }
        }
    }
}
