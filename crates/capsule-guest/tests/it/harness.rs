//! Build a data disk (as a directory), run capsule-init on it in host mode, read the result.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use capsule_manifest::{EntryKind, InputEntry, JobResult, Manifest};

/// A capsule under construction: the manifest plus the files that go into input.tar.
pub struct Capsule {
    pub dir: tempfile::TempDir,
    pub manifest: Manifest,
    files: Vec<(String, Vec<u8>, u32)>,
    dirs: Vec<String>,
    /// Raw capsule.json text instead of the manifest (for refusal tests).
    pub raw_manifest: Option<String>,
    /// Size of the data-disk image made by [`Capsule::run`].
    pub disk_size: u64,
}

/// What a run left behind.
pub struct Ran {
    pub result: JobResult,
    pub data: PathBuf,
    pub scratch: PathBuf,
    pub log: String,
    /// The raw image capsule-init wrote (runs on an image only).
    pub image: Option<PathBuf>,
    /// Keeps the files alive as long as the result is looked at.
    _dir: tempfile::TempDir,
}

impl Ran {
    /// A data-disk file as text.
    pub fn text(&self, name: &str) -> String {
        fs::read_to_string(self.data.join(name)).unwrap()
    }

    /// Assert that `fsck.fat -n` finds no error in the FAT partition of a raw image run.
    pub fn fsck(&self) {
        let image = self.image.as_ref().expect("an image run");
        let start = DataDisk::open(image, Access::ReadOnly)
            .unwrap()
            .info()
            .unwrap()
            .partition
            .start;
        let bytes = fs::read(image).unwrap();
        let part = image.with_extension("part");
        fs::write(&part, &bytes[usize::try_from(start).unwrap()..]).unwrap();
        run_ok(Command::new("fsck.fat").arg("-n").arg(&part));
    }

    /// The entries of output.tar: (path, content) with directories as `dir/` and no content.
    pub fn output_tar(&self) -> Vec<(String, String)> {
        let bytes = fs::read(self.data.join("output.tar")).unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            out.push((path, s));
        }
        out
    }
}

/// Run `cmd`; it must exit 0 (its stdout and stderr are in the failure message). Its output.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A capsule whose executable is a shell script `job.sh` with this body.
pub fn script(body: &str) -> Capsule {
    let mut c = Capsule {
        dir: tempfile::tempdir().unwrap(),
        manifest: Manifest::new("job.sh".parse().unwrap(), vec!["job.sh".into()]),
        files: Vec::new(),
        dirs: Vec::new(),
        raw_manifest: None,
        disk_size: 32 << 20,
    };
    c.file("job.sh", &format!("#!/bin/sh\n{body}\n"), 0o755);
    c
}

impl Capsule {
    /// Add an input file.
    pub fn file(&mut self, path: &str, content: &str, mode: u32) -> &mut Self {
        self.files
            .push((path.into(), content.as_bytes().to_vec(), mode));
        self.manifest.inputs.push(InputEntry {
            path: path.parse().unwrap(),
            kind: EntryKind::File,
        });
        self
    }

    /// Add an input directory.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.dirs.push(path.into());
        self.manifest.inputs.push(InputEntry {
            path: path.parse().unwrap(),
            kind: EntryKind::Dir,
        });
        self
    }

    /// Write the data disk's host-side files into `data`.
    pub fn write_data_dir(&self, data: &Path) {
        fs::create_dir_all(data).unwrap();
        let json = match &self.raw_manifest {
            Some(raw) => raw.clone().into_bytes(),
            None => self.manifest.to_json().unwrap(),
        };
        fs::write(data.join("capsule.json"), json).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for d in &self.dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("{d}/"), std::io::empty())
                .unwrap();
        }
        for (path, content, mode) in &self.files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_size(u64::try_from(content.len()).unwrap());
            h.set_mtime(1_600_000_000);
            b.append_data(&mut h, path, &content[..]).unwrap();
        }
        fs::write(data.join("input.tar"), b.into_inner().unwrap()).unwrap();
    }

    /// Run capsule-init in host mode on a raw image file (`--image`), the FAT read and written
    /// in user space; the disk's files are then copied out for the assertions.
    pub fn run(self) -> Ran {
        self.run_image(ImageFormat::Raw)
    }

    /// As [`Capsule::run`], on an image of `format` (capsule-init detects it by magic).
    pub fn run_image(self, format: ImageFormat) -> Ran {
        let image = self.dir.path().join("data.img");
        self.make_image(&image, format).finish().unwrap();
        let ran = self.run_with(&["--image".as_ref(), image.as_os_str()]);
        self.returned(ran, image)
    }

    /// Free bytes the job's outputs will find on the data disk made by [`Capsule::run`].
    pub fn free_for_outputs(&self) -> u64 {
        let probe = self.dir.path().join("probe.img");
        let free = self
            .make_image(&probe, ImageFormat::Raw)
            .info()
            .unwrap()
            .free;
        fs::remove_file(probe).unwrap();
        free
    }

    /// A data disk of `disk_size` holding capsule.json and input.tar, still open.
    fn make_image(&self, image: &Path, format: ImageFormat) -> DataDisk {
        let staged = self.dir.path().join("staged");
        self.write_data_dir(&staged);
        let opts = CreateOptions::new().size(self.disk_size).format(format);
        let disk = DataDisk::create(image, &opts).unwrap();
        for name in ["capsule.json", "input.tar"] {
            disk.put_file(name, &mut fs::File::open(staged.join(name)).unwrap())
                .unwrap();
        }
        disk
    }

    /// Run capsule-init in host mode the way a guest unit does: `--label` finds the data disk
    /// (a raw image standing in for `vdb`) in a fake `/sys/class/block` + `/dev`, next to a
    /// disk that is not FAT; `shipped`, if given, goes on the disk as its `capsule-init`;
    /// `extra` are further arguments (`--shipped-agent`).
    pub fn run_by_label(self, label: &str, shipped: Option<&[u8]>, extra: &[&str]) -> Ran {
        let sys = self.dir.path().join("sys");
        let dev = self.dir.path().join("dev");
        for (name, size) in [("vda", "4096"), ("vdb", "65536")] {
            fs::create_dir_all(sys.join(name)).unwrap();
            fs::write(sys.join(name).join("size"), size).unwrap();
        }
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vda"), vec![0u8; 2 << 20]).unwrap();
        let image = dev.join("vdb");
        let disk = self.make_image(&image, ImageFormat::Raw);
        if let Some(agent) = shipped {
            disk.put_file("capsule-init", &mut &agent[..]).unwrap();
        }
        disk.finish().unwrap();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--label".as_ref(),
            label.as_ref(),
            "--sys-block".as_ref(),
            sys.as_os_str(),
            "--dev-dir".as_ref(),
            dev.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let ran = self.run_with(&args);
        self.returned(ran, image)
    }

    /// Finish a run on the data disk `image`: its files copied out as the returned data.
    fn returned(self, ran: RawRun, image: PathBuf) -> Ran {
        let data = self.dir.path().join("returned");
        fs::create_dir(&data).unwrap();
        let disk = DataDisk::open(&image, Access::ReadOnly).unwrap();
        for entry in disk.list("").unwrap() {
            let mut src = disk.open_file(&entry.name).unwrap();
            let mut dst = fs::File::create(data.join(&entry.name)).unwrap();
            std::io::copy(&mut src, &mut dst).unwrap();
        }
        let mut ran = ran.finish(self, data);
        ran.image = Some(image);
        ran
    }

    /// Run capsule-init in host mode on a plain data directory (`--data-dir`, the seed's
    /// mounted mode).
    pub fn run_in_dir(self) -> Ran {
        let data = self.dir.path().join("data");
        self.write_data_dir(&data);
        let ran = self.run_with(&["--data-dir".as_ref(), data.as_os_str()]);
        ran.finish(self, data)
    }

    fn run_with(&self, source: &[&std::ffi::OsStr]) -> RawRun {
        let scratch = self.dir.path().join("scratch");
        // A relative --scratch: the job's path must still resolve after the chdir into the
        // work dir (a bug found by the first native timing run).
        let out = Command::new(env!("CARGO_BIN_EXE_capsule-init"))
            .current_dir(self.dir.path())
            .args(source)
            .args(["--scratch", "scratch"])
            .args(["--as-current-user", "--no-poweroff"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "capsule-init failed: {log}");
        RawRun { scratch, log }
    }
}

/// A finished run before its files are looked at.
struct RawRun {
    scratch: PathBuf,
    log: String,
}

impl RawRun {
    fn finish(self, c: Capsule, data: PathBuf) -> Ran {
        let RawRun { scratch, log } = self;
        let result = JobResult::from_json(&fs::read(data.join("result.json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{log}"));
        Ran {
            result,
            data,
            scratch,
            log,
            image: None,
            _dir: c.dir,
        }
    }
}
