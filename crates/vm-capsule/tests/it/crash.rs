//! Crashes: a hook killed with `kill -9` at a random point and run again must end
//! exactly where one uninterrupted run ends, leaving nothing behind. The kill points are
//! random (the seed is printed, and `CRASH_SEED` replays one).

use std::fs;
use std::path::{Path, PathBuf};

use capsule_disk::{Access, DataDisk, ImageFormat};
use classad::eval::string_attr;
use classad::{ClassAd, Expr};

use crate::execute_node::files_under;
use crate::router::{job_ads, print_ad, Pool};

fn template(dir: &Path) {
    crate::execute_node::qcow2_data_disk(dir);
    capsule_disk::Image::create(&dir.join("os.qcow2"), ImageFormat::Qcow2, 32 << 20)
        .unwrap()
        .finish()
        .unwrap();
}

/// xorshift64*: enough randomness for kill points, replayable from its seed.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::UNIX_EPOCH
                    .elapsed()
                    .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
                    | 1
            });
        eprintln!("crash test seed: CRASH_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn job(pool: &Pool, name: &str, submit: &str, files: &[(&str, Vec<u8>)]) -> (PathBuf, ClassAd) {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    for (n, data) in files {
        fs::write(iwd.join(n), data).unwrap();
    }
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    (iwd, job_ads(&[(name.to_owned(), text, 77)]).remove(0))
}

/// The files of a data disk (name and contents), as the guest would read them.
fn disk_files(path: &Path) -> Vec<(String, Vec<u8>)> {
    let disk = DataDisk::open(path, Access::ReadOnly).unwrap();
    let mut out = Vec::new();
    for entry in disk.list("/").unwrap() {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut disk.open_file(&entry.name).unwrap(), &mut data).unwrap();
        out.push((entry.name, data));
    }
    out.sort();
    out
}

#[test]
fn translate_killed_anywhere_then_rerun_converges() {
    let pool = Pool::new(&template);
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i % 253) as u8).collect();
    let (_, ad) = job(
        &pool,
        "t",
        "transfer_input_files = big.dat",
        &[("big.dat", big)],
    );
    let stdin = format!(
        "[ Name = \"VM capsule\"; TargetUniverse = 13 ]\n------\n{}",
        print_ad(&ad)
    );
    // The reference: one uninterrupted run.
    let reference = pool.translate(&ad).unwrap();
    let reference_disk =
        PathBuf::from(string_attr(&reference, "VMCapsuleScratch").unwrap()).join("data.qcow2");
    let want = disk_files(&reference_disk);
    pool.cleanup(&reference);
    let owner_dir = pool
        .root
        .path()
        .join("scratch")
        .join(crate::router::current_user());
    let mut rng = Rng::new();
    for _ in 0..6 {
        pool.run_hook_killed("translate", &stdin, rng.below(900));
        // Later (past the grace period), the next translate reclaims what the crash left.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
        for e in fs::read_dir(&owner_dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                fs::File::open(&p).unwrap().set_modified(old).unwrap();
            }
        }
        let _ = fs::remove_file(owner_dir.join(".vm-capsule-swept"));
        let routed = pool.translate(&ad).unwrap();
        let scratch = PathBuf::from(string_attr(&routed, "VMCapsuleScratch").unwrap());
        assert_eq!(disk_files(&scratch.join("data.qcow2")), want);
        pool.cleanup(&routed);
        // A kill after the commit leaves a finished dir no router knows: the crash's cost,
        // which cleanup of that (never routed) dir cannot reach; everything else is gone.
        let left: Vec<String> = fs::read_dir(&owner_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".vm-capsule-swept")
            .collect();
        assert!(
            left.iter().all(|n| !n.ends_with(".staging")),
            "stale staging dirs survived a sweep: {left:?}"
        );
        for n in left {
            fs::remove_dir_all(owner_dir.join(n)).unwrap();
        }
    }
}

#[test]
fn finalize_killed_anywhere_then_rerun_converges() {
    let pool = Pool::new(&template);
    let (iwd, ad) = job(
        &pool,
        "f",
        "transfer_output_files = o, top.txt\noutput = out.txt",
        &[],
    );
    let routed = pool.translate(&ad).unwrap();
    let disk = PathBuf::from(string_attr(&routed, "VMCapsuleScratch").unwrap()).join("data.qcow2");
    // What the guest wrote: many files in a tree, one at the top, a stdout.
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..200 {
        let data = vec![u8::try_from(i % 251).unwrap(); 50_000 + i * 13];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        tar.append_data(&mut h, format!("o/d{}/f{i}", i % 7), data.as_slice())
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    tar.append_data(&mut h, "top.txt", &b"top"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let d = DataDisk::open(&disk, Access::ReadWrite).unwrap();
    d.put_file("output.tar", &mut tar.as_slice()).unwrap();
    d.put_file("stdout", &mut &b"the job's stdout\n"[..])
        .unwrap();
    d.put_file("stderr", &mut &b""[..]).unwrap();
    let mut result = capsule_manifest::JobResult::not_started(
        "",
        capsule_manifest::AgentInfo {
            version: "0".into(),
            user: "condor".into(),
            uid: 1000,
            setup_secs: 0.0,
        },
    );
    result.outcome = capsule_manifest::Outcome::Exited { code: 0 };
    result.problems.clear();
    result.outputs = vec![capsule_manifest::OutputEntry {
        path: "o".parse().unwrap(),
        kind: capsule_manifest::EntryKind::Dir,
        size: 1,
    }];
    d.put_file("result.json", &mut result.to_json().unwrap().as_slice())
        .unwrap();
    d.finish().unwrap();

    let mut src = ad.clone();
    src.insert("JobStatus", Expr::integer(4));
    let stdin = format!("{}\n------\n{}", print_ad(&src), print_ad(&routed));
    // The reference tree: one uninterrupted run, then cleared.
    pool.finalize(&ad, &routed);
    let want = files_under(&iwd);
    let mut rng = Rng::new();
    for round in 0..8 {
        for f in fs::read_dir(&iwd).unwrap() {
            let p = f.unwrap().path();
            if p.file_name().unwrap() != "job.sh" {
                if p.is_dir() {
                    fs::remove_dir_all(&p).unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                }
            }
        }
        // One or two crashes at random points, then the run that finishes.
        for _ in 0..=(round % 2) {
            pool.run_hook_killed("finalize", &stdin, rng.below(250));
        }
        pool.finalize(&ad, &routed);
        assert_eq!(files_under(&iwd), want, "round {round}: the tree differs");
    }
    pool.cleanup(&routed);
}
