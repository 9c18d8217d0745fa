//! The trust boundary, one test per attack: a hostile guest (it controls every byte
//! of the returned data disk), a hostile local user (the scratch prefix is shared), crashes
//! and full disks. The hooks run as the stand-in router runs them; where an attack needs two
//! users, real unprivileged accounts (`vmcap-alice`, `vmcap-mallory`, made by `.ci/run`) are
//! used, never the test knob that lets a hook run as another user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use capsule_manifest::{AgentInfo, EntryKind, JobResult, Outcome, OutputEntry};
use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::router::{job_ads, job_ads_of, print_ad, HookRun, Pool};

mod admin;
mod crash;
mod guest;
mod input;
mod launcher;
mod libvirt;
mod local_user;

/// A template with a qcow2 OS disk and a data disk in `format`.
fn template(format: ImageFormat) -> impl Fn(&Path) {
    move |dir: &Path| {
        capsule_disk::Image::create(&dir.join("os.qcow2"), ImageFormat::Qcow2, 64 << 20)
            .unwrap()
            .finish()
            .unwrap();
        let name = match format {
            ImageFormat::Vmdk => "data.vmdk",
            ImageFormat::Raw => "data.img",
            ImageFormat::Qcow2 => "data.qcow2",
        };
        DataDisk::create(
            &dir.join(name),
            &CreateOptions::new().size(64 << 20).format(format),
        )
        .unwrap()
        .finish()
        .unwrap();
        if format == ImageFormat::Vmdk {
            fs::write(
                dir.join("capsule.vmx"),
                "scsi0:0.fileName = \"os.vmdk\"\nscsi0:1.fileName = \"data.vmdk\"\n",
            )
            .unwrap();
        }
    }
}

/// A submitted job: its Iwd, its ad.
struct Job {
    iwd: PathBuf,
    ad: ClassAd,
}

fn job(pool: &Pool, name: &str, submit: &str, cluster: i64) -> Job {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[(name.to_owned(), text, cluster)]).remove(0);
    Job { iwd, ad }
}

fn scratch_of(routed: &ClassAd) -> PathBuf {
    PathBuf::from(string_attr(routed, "VMCapsuleScratch").unwrap())
}

/// A valid `result.json`: the job exited with `code`, listing `outputs`.
fn result_json(code: u8, outputs: &[&str], error: Option<&str>) -> Vec<u8> {
    let mut r = JobResult::not_started(
        "",
        AgentInfo {
            version: "0.1.0".into(),
            user: "condor".into(),
            uid: 1000,
            setup_secs: 0.0,
        },
    );
    r.outcome = Outcome::Exited { code };
    r.problems.clear();
    if let Some(e) = error {
        r.add_problem(capsule_manifest::ProblemKind::Agent, e);
    }
    r.outputs = outputs
        .iter()
        .map(|p| OutputEntry {
            path: p.parse().unwrap(),
            kind: EntryKind::File,
            size: 1,
        })
        .collect();
    r.to_json().unwrap()
}

/// What a hostile guest leaves on the data disk: a result, an `output.tar`, streams.
fn forge(disk: &Path, result: &[u8], output_tar: Option<&[u8]>) {
    let d = DataDisk::open(disk, Access::ReadWrite).unwrap();
    if let Some(tar) = output_tar {
        d.put_file(capsule_manifest::OUTPUT_TAR, &mut &tar[..])
            .unwrap();
    }
    d.put_file(capsule_manifest::DEFAULT_STDOUT, &mut &b""[..])
        .unwrap();
    d.put_file(capsule_manifest::DEFAULT_STDERR, &mut &b""[..])
        .unwrap();
    d.put_file(capsule_manifest::RESULT_JSON, &mut &result[..])
        .unwrap();
    d.finish().unwrap();
}

/// A raw tar member (long names in a GNU long-name member first).
fn member(name: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if name.len() > 100 {
        out.extend(member(b"././@LongLink", tar::EntryType::GNULongName, name));
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = Vec::new();
    for (name, data) in entries {
        t.extend(member(name.as_bytes(), tar::EntryType::Regular, data));
    }
    t.extend([0u8; 1024]);
    t
}

fn attr(attrs: &ClassAd, name: &str) -> Value {
    evaluate_attr(attrs, name)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = crate::execute_node::files_under(dir)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    names.sort();
    names
}

/// Translate, forge the returned disk, finalize: the attributes for the original.
fn run_forged(pool: &Pool, j: &Job, result: &[u8], tar: Option<&[u8]>) -> (HookRun, ClassAd) {
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join(string_attr(&routed, "VMCapsuleDataDisk").unwrap());
    forge(&disk, result, tar);
    pool.finalize(&j.ad, &routed)
}
