//! Whole-VM checkpoints in the vanilla flavour: the routed job becomes a self-checkpointing
//! one whose checkpoint is the launcher's file of the VM's state.

use classad::eval::{evaluate_attr, string_attr};
use classad::print::expr_to_string;
use classad::{ClassAd, Expr, Syntax, Value};

use super::{
    and_requirement, ATTR_CHECKPOINT, ATTR_CHECKPOINT_QEMU, CHECKPOINT_FILE, QEMU_VERSION_ATTR,
    VM_CHECKPOINT_EXIT_CODE,
};

/// Make the routed job self-checkpointing, as `checkpoint_exit_code` and
/// `transfer_checkpoint_files` would (`SetAutoAttributes`): the launcher exits with the code
/// after writing [`CHECKPOINT_FILE`], which the starter then sends to the schedd's spool. A
/// job that checkpoints itself by exit code keeps its code and files, ours added; these win
/// over the carried interruption attributes. Once a checkpoint exists, the job matches only nodes
/// with the QEMU that wrote it.
pub(super) fn ask_for_checkpoint(ad: &mut ClassAd, original: &ClassAd) {
    let own_code = job_checkpoint_exit_code(original);
    ad.insert(ATTR_CHECKPOINT, Expr::boolean(true));
    ad.insert("WantFTOnCheckpoint", Expr::boolean(true));
    ad.insert(
        "SuccessCheckpointExitCode",
        Expr::integer(own_code.unwrap_or(VM_CHECKPOINT_EXIT_CODE)),
    );
    // The starter compares a signal instead of the code when this is true.
    ad.insert("SuccessCheckpointExitBySignal", Expr::boolean(false));
    ad.remove("SuccessCheckpointExitSignal");
    // A list that is there, even empty, is what HTCondor sends: ours joins it.
    let list = match (string_attr(original, "TransferCheckpoint"), own_code) {
        (Some(own), _) => Some(with_checkpoint_file(&own)),
        (None, Some(_)) => {
            string_attr(original, "TransferOutput").map(|out| with_checkpoint_file(&out))
        }
        (None, None) => Some(CHECKPOINT_FILE.to_owned()),
    };
    match list {
        Some(list) => ad.insert("TransferCheckpoint", Expr::string(list)),
        // A self-checkpointing job without a list: HTCondor sends every changed file.
        None => {
            ad.remove("TransferCheckpoint");
        }
    }
    // condor_submit's own clause for such jobs (`SetRequirements`), unless already there.
    let checks = ad.get("Requirements").is_some_and(|r| {
        expr_to_string(r, Syntax::New)
            .to_ascii_lowercase()
            .contains("hasselfcheckpointtransfers")
    });
    if !checks {
        and_requirement(ad, "TARGET.HasSelfCheckpointTransfers");
    }
    and_requirement(
        ad,
        &format!(
            "(MY.{ATTR_CHECKPOINT_QEMU} =?= undefined || TARGET.{QEMU_VERSION_ATTR} =?= MY.{ATTR_CHECKPOINT_QEMU})"
        ),
    );
}

/// The exit code with which the job in `original` checkpoints itself, as the starter would
/// take it: `WantFTOnCheckpoint` true and `SuccessCheckpointExitCode` an exit status (0 to 255),
/// not by signal. `None`: the job does not checkpoint itself by exit code.
pub fn job_checkpoint_exit_code(original: &ClassAd) -> Option<i64> {
    let wants_ft = evaluate_attr(original, "WantFTOnCheckpoint") == Value::Bool(true);
    let by_signal = evaluate_attr(original, "SuccessCheckpointExitBySignal") == Value::Bool(true);
    match evaluate_attr(original, "SuccessCheckpointExitCode") {
        Value::Integer(code) if wants_ft && !by_signal && (0..=255).contains(&code) => Some(code),
        _ => None,
    }
}

/// HTCondor's file list `list` with [`CHECKPOINT_FILE`] added once.
fn with_checkpoint_file(list: &str) -> String {
    let mut names = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|f| !f.is_empty());
    if names.clone().any(|f| f == CHECKPOINT_FILE) {
        list.to_owned()
    } else if names.next().is_none() {
        CHECKPOINT_FILE.to_owned()
    } else {
        format!(
            "{},{CHECKPOINT_FILE}",
            list.trim_end_matches(|c: char| c == ',' || c.is_whitespace())
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use classad::eval::evaluate_match;

    use super::*;
    use crate::job::JobSpec;
    use crate::routed::{build_vanilla, Staged, VanillaInputs};

    const BASE: &str = "ClusterId = 7\nProcId = 0\nOwner = \"alice\"\nIwd = \"/home/alice\"\nCmd = \"job.sh\"\nRequirements = TARGET.Memory > 0\n";

    /// The vanilla routed ad of a job with `extra` attributes, checkpointed or not.
    fn routed(extra: &str, checkpoint: bool) -> ClassAd {
        let original = classad::parse_old_ad(&format!("{BASE}{extra}")).unwrap();
        let job = JobSpec::from_ad(&original).unwrap();
        let staged = Staged {
            scratch: "/tmp/vm-capsule/alice/7.0".into(),
            disks: Vec::new(),
            transfer: Vec::new(),
            data_disk: "data.img".into(),
            data_disk_format: "raw",
            data_disk_bytes: None,
            memory_mib: 512,
            vcpus: 1,
            vmx: None,
            boot: None,
            request_disk_kib: 1024,
            node_bases: Vec::new(),
        };
        let parts = VanillaInputs {
            launcher: Path::new("/usr/libexec/vm-capsule/vm-capsule"),
            agent: None,
            timeout_secs: None,
            launcher_on_node: false,
            checkpoint,
        };
        build_vanilla(&job, &original, &staged, &parts)
    }

    fn text(ad: &ClassAd, name: &str) -> Option<String> {
        string_attr(ad, name)
    }

    fn code(ad: &ClassAd) -> Value {
        evaluate_attr(ad, "SuccessCheckpointExitCode")
    }

    #[test]
    fn a_plain_job_gets_our_code_and_file_over_what_it_carried() {
        // Half-set self-checkpointing attributes (no WantFTOnCheckpoint: the starter ignores
        // the code) and a checkpoint by signal are carried, then replaced by ours.
        for extra in [
            "",
            "SuccessCheckpointExitCode = 3\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitBySignal = true\nSuccessCheckpointExitSignal = 10\n",
        ] {
            let ad = routed(extra, true);
            assert_eq!(evaluate_attr(&ad, ATTR_CHECKPOINT), Value::Bool(true), "{extra}");
            assert_eq!(evaluate_attr(&ad, "WantFTOnCheckpoint"), Value::Bool(true));
            assert_eq!(code(&ad), Value::Integer(85), "{extra}");
            assert_eq!(
                evaluate_attr(&ad, "SuccessCheckpointExitBySignal"),
                Value::Bool(false)
            );
            assert!(!ad.contains("SuccessCheckpointExitSignal"), "{extra}");
            assert_eq!(
                text(&ad, "TransferCheckpoint").as_deref(),
                Some(CHECKPOINT_FILE)
            );
        }
    }

    #[test]
    fn a_job_with_its_own_checkpoint_list_keeps_it_with_ours_added() {
        let ad = routed(
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nTransferCheckpoint = \"ckpt.dat, state/\"\nTransferOutput = \"out.txt\"\n",
            true,
        );
        assert_eq!(code(&ad), Value::Integer(77));
        assert_eq!(
            text(&ad, "TransferCheckpoint").as_deref(),
            Some("ckpt.dat, state/,vm-capsule.checkpoint")
        );
        assert_eq!(text(&ad, "TransferOutput").as_deref(), Some("out.txt"));
        // Named already: not twice.
        let ad = routed("TransferCheckpoint = \"vm-capsule.checkpoint,a\"\n", true);
        assert_eq!(
            text(&ad, "TransferCheckpoint").as_deref(),
            Some("vm-capsule.checkpoint,a")
        );
        assert_eq!(code(&ad), Value::Integer(85));
    }

    #[test]
    fn a_self_checkpointing_job_with_outputs_checkpoints_them_and_ours() {
        let ad = routed(
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nTransferOutput = \"out.txt,ckpt.dat\"\n",
            true,
        );
        assert_eq!(code(&ad), Value::Integer(77));
        assert_eq!(
            text(&ad, "TransferCheckpoint").as_deref(),
            Some("out.txt,ckpt.dat,vm-capsule.checkpoint")
        );
        assert_eq!(
            text(&ad, "TransferOutput").as_deref(),
            Some("out.txt,ckpt.dat")
        );
    }

    #[test]
    fn a_self_checkpointing_job_without_lists_sends_every_changed_file() {
        let ad = routed(
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\n",
            true,
        );
        assert_eq!(code(&ad), Value::Integer(77));
        assert!(!ad.contains("TransferCheckpoint"));
        assert!(!ad.contains("TransferOutput"));
    }

    #[test]
    fn without_checkpoints_the_carried_attributes_are_untouched() {
        let ad = routed(
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nSuccessCheckpointExitBySignal = false\n",
            false,
        );
        assert!(!ad.contains(ATTR_CHECKPOINT));
        assert_eq!(code(&ad), Value::Integer(77));
        assert!(!ad.contains("TransferCheckpoint"));
        let req =
            classad::print::expr_to_string(ad.get("Requirements").unwrap(), classad::Syntax::New);
        assert!(!req.contains(ATTR_CHECKPOINT_QEMU), "{req}");
    }

    #[test]
    fn once_checkpointed_the_job_matches_only_the_qemu_that_wrote_it() {
        let fresh = routed("", true);
        let mut restarted = fresh.clone();
        restarted.insert(ATTR_CHECKPOINT_QEMU, Expr::string("7.2.19"));
        let node = |extra: &str| {
            classad::parse_old_ad(&format!(
                "HasVMCapsuleQemu = true\nHasSelfCheckpointTransfers = true\nArch = \"X86_64\"\nOpSys = \"LINUX\"\nMemory = 4096\n{extra}"
            ))
            .unwrap()
        };
        let same = node("VMCapsuleQemuVersion = \"7.2.19\"\n");
        let other = node("VMCapsuleQemuVersion = \"8.2.2\"\n");
        let unknown = node("");
        let matches = |job: &ClassAd, machine: &ClassAd| {
            evaluate_match(job.get("Requirements").unwrap(), job, machine)
        };
        for machine in [&same, &other, &unknown] {
            assert_eq!(matches(&fresh, machine), Value::Bool(true));
        }
        assert_eq!(matches(&restarted, &same), Value::Bool(true));
        assert_eq!(matches(&restarted, &other), Value::Bool(false));
        assert_eq!(matches(&restarted, &unknown), Value::Bool(false));
        // The job's own requirements still hold.
        let small = node("VMCapsuleQemuVersion = \"7.2.19\"\nMemory = 0\n");
        assert_eq!(matches(&restarted, &small), Value::Bool(false));
    }

    #[test]
    fn the_job_needs_a_starter_that_transfers_checkpoints_as_condor_submit_says() {
        let req = |ad: &ClassAd| {
            classad::print::expr_to_string(ad.get("Requirements").unwrap(), Syntax::New)
        };
        let ad = routed("", true);
        assert_eq!(
            req(&ad).matches("HasSelfCheckpointTransfers").count(),
            1,
            "{}",
            req(&ad)
        );
        let old = classad::parse_old_ad(
            "HasVMCapsuleQemu = true\nArch = \"X86_64\"\nOpSys = \"LINUX\"\nMemory = 4096\n",
        )
        .unwrap();
        // Undefined there: no match.
        assert!(!classad::eval::match_is_true(
            ad.get("Requirements").unwrap(),
            &ad,
            &old
        ));
        // A self-checkpointing job's own requirements have it already (condor_submit's).
        let own = routed(
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nRequirements = TARGET.Memory > 0 && TARGET.HasSelfCheckpointTransfers\n",
            true,
        );
        assert_eq!(
            req(&own).matches("HasSelfCheckpointTransfers").count(),
            1,
            "{}",
            req(&own)
        );
        assert!(!req(&routed("", false)).contains("HasSelfCheckpointTransfers"));
    }

    #[test]
    fn the_jobs_own_checkpoint_code_is_the_one_the_starter_would_honour() {
        let of = |text: &str| job_checkpoint_exit_code(&classad::parse_old_ad(text).unwrap());
        assert_eq!(
            of("WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\n"),
            Some(77)
        );
        for text in [
            "",
            "SuccessCheckpointExitCode = 77\n",
            "WantFTOnCheckpoint = false\nSuccessCheckpointExitCode = 77\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 300\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = \"77\"\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nSuccessCheckpointExitBySignal = true\nSuccessCheckpointExitSignal = 10\n",
        ] {
            assert_eq!(of(text), None, "{text}");
        }
    }

    #[test]
    fn an_empty_list_is_a_list_that_gets_the_vm_file() {
        // HTCondor sends exactly the files of a list that is there, even an empty one: ours
        // must then be named, not left to the "every changed file" rule.
        for extra in [
            "TransferCheckpoint = \"\"\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nTransferCheckpoint = \"\"\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nTransferOutput = \"\"\n",
            "WantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 77\nTransferOutput = \" , \"\n",
        ] {
            let ad = routed(extra, true);
            assert_eq!(
                text(&ad, "TransferCheckpoint").as_deref(),
                Some(CHECKPOINT_FILE),
                "{extra}"
            );
        }
    }
}
