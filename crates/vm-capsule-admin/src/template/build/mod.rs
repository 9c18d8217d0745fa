//! `vm-capsule template build`: a template VM from Debian's packages alone.
//!
//! 1. [`rootfs`]: `mmdebstrap` makes the root file system as a tarball (cached by recipe);
//! 2. it is unpacked into a scratch tree, where the agent and its unit are added;
//! 3. [`bootdisk`]: `mke2fs -d` + GRUB's boot images turn the tree into a BIOS-bootable disk,
//!    converted to a compressed qcow2;
//! 4. the template directory gets the OS disk (and its sha256), a data disk, the image's own
//!    kernel and initrd for direct kernel boot, and a classad template.
//!
//! Root is needed for step 2 only (the tree must hold files owned by root and others, as the
//! image will); nothing is mounted and no loop device is used. Same inputs, same image: every
//! time stamp is `SOURCE_DATE_EPOCH`, UUIDs derive from the recipe.

pub(crate) mod bootdisk;
pub mod cache;
pub(crate) mod initramfs;
pub mod rootfs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{CreateOptions, DataDisk, ImageFormat};
use thiserror::Error;

pub use vm_capsule_core::nocloud::AgentStart;

use vm_capsule_core::digest::{sha256_file, sha256_hex};
use vm_capsule_core::template::TEMPLATE_SUBDIR;

/// Progress lines for the user (`template build: ...`).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// The systemd unit shipped with vm-capsule (`guest/capsule-init.service`).
pub const UNIT_FILE: &str = include_str!("../../../../../guest/capsule-init.service");
/// Where the unit and the agent go in an image.
pub const UNIT_PATH: &str = "etc/systemd/system/capsule-init.service";
/// The agent's path in an image.
pub const AGENT_PATH: &str = "usr/local/sbin/capsule-init";

/// The OS disk's file name in the template.
pub const OS_DISK: &str = "os.qcow2";
/// The classad template's file name, beside `condor_vm_capsule/`.
pub const CLASSAD_TEMPLATE: &str = vm_capsule_core::template::CLASSAD_TEMPLATE_FILE;

/// Kernel parameters beyond the root and the console, chosen from measured boot times
/// (docs/PERFORMANCE.md): none of them changes what a job sees.
const KERNEL_PARAMS: &str = "quiet";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Debian suite.
    pub suite: String,
    /// Debian mirror (`None`: deb.debian.org).
    pub mirror: Option<String>,
    /// The template directory to create (`VM_CAPSULE_TEMPLATE`).
    pub out: PathBuf,
    /// How the agent starts: the unit in the image, or cloud-init (then no agent is put in
    /// the image: it is a plain Debian cloud image).
    pub start: AgentStart,
    /// The static agent to put in the image.
    pub agent: PathBuf,
    /// Virtual size of the OS disk, bytes.
    pub size: u64,
    /// Where root file systems and downloaded packages are kept between builds.
    pub cache: PathBuf,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// Also put the image's kernel, initrd and command line in the template, so it boots them
    /// directly (faster; in the VM universe it needs vm-capsule's `libvirt-xml` as the nodes'
    /// LIBVIRT_XML_SCRIPT, docs/ADMIN.md).
    pub direct_boot: bool,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    /// `<out>/condor_vm_capsule/os.qcow2`.
    pub os_disk: PathBuf,
    /// Its sha256 (also written to `os.qcow2.sha256`).
    pub os_sha256: String,
    /// Bytes the OS disk occupies.
    pub os_bytes: u64,
    /// `<out>/classad-template.ad`.
    pub classad_template: PathBuf,
    /// The kernel version inside.
    pub kernel_version: String,
}

/// Why a build failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A tool is not installed.
    #[error("{tool} is not installed; install it (Debian: apt-get install {package})")]
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package.
        package: &'static str,
    },
    /// Not running as root.
    #[error("template build needs root to unpack the root file system with its owners (nothing is mounted); run it as root or with sudo")]
    NeedsRoot,
    /// A tool failed.
    #[error("{tool} failed ({status}): {detail}")]
    Tool {
        /// The program.
        tool: String,
        /// Its exit status.
        status: String,
        /// The end of its output, or where its log is.
        detail: String,
    },
    /// An input is not usable.
    #[error("{what} {value}: {why}")]
    Invalid {
        /// What.
        what: &'static str,
        /// The value.
        value: String,
        /// Why, and the fix.
        why: String,
    },
    /// No cache directory was given and none can be derived.
    #[error("neither XDG_CACHE_HOME nor HOME is set, and the temp dir is no place for the cache (other users can write there and root unpacks what it finds); pass --cache DIR, a directory of yours that no one else can write (made with mode 0700 if missing), or set XDG_CACHE_HOME")]
    NoCache,
    /// The cache directory could be written by someone else.
    #[error("the cache {cache} cannot be used: {problem}; pass --cache DIR, a directory of yours that no one else can write (made with mode 0700 if missing)")]
    UnsafeCache {
        /// The cache.
        cache: PathBuf,
        /// What is wrong, and where.
        problem: vm_capsule_core::scratch::NotOwnDir,
    },
    /// The template directory could be written by someone else.
    #[error("the template directory {dir} cannot be used: {problem}; name a directory of yours that no one else can write")]
    UnsafeOutput {
        /// The directory.
        dir: PathBuf,
        /// What is wrong, and where.
        problem: vm_capsule_core::scratch::NotOwnDir,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    pub(crate) fn io(what: String, source: std::io::Error) -> BuildError {
        BuildError::Io { what, source }
    }
}

/// The Debian package of each tool a build runs.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("dumpe2fs", "e2fsprogs"),
    ("grub-mkimage", "grub-pc-bin"),
    ("qemu-img", "qemu-utils"),
    ("tar", "tar"),
    ("virt-customize", "libguestfs-tools"),
];

/// Run `cmd`; on failure the error carries the end of its output (or names `log`, where all
/// of it went).
pub(crate) fn run_tool(
    cmd: &mut Command,
    tool: &str,
    log: Option<&Path>,
) -> Result<(), BuildError> {
    let out = match log {
        Some(path) => {
            let file = create_log(path)
                .map_err(|e| BuildError::io(format!("cannot create {}", path.display()), e))?;
            let err = file
                .try_clone()
                .map_err(|e| BuildError::io(format!("cannot open {}", path.display()), e))?;
            cmd.stdout(file).stderr(err);
            cmd.status().map(|status| std::process::Output {
                status,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        }
        None => cmd.output(),
    };
    let out = out.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BuildError::MissingTool {
            tool: tool.to_owned(),
            package: TOOLS
                .iter()
                .find(|(t, _)| *t == tool)
                .map_or("(unknown)", |(_, p)| p),
        },
        _ => BuildError::io(format!("cannot run {tool}"), e),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let detail = match log {
        Some(path) => {
            let text = fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            format!(
                "{} (whole log: {})",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                path.display()
            )
        }
        None => {
            let text = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        }
    };
    Err(BuildError::Tool {
        tool: tool.to_owned(),
        status: out.status.to_string(),
        detail,
    })
}

/// A new log file at `path`: the old one removed, then created `O_EXCL|O_NOFOLLOW` (a link
/// or file put there is never written through).
fn create_log(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path)
}

/// Run `cmd` and return its stdout.
pub(crate) fn tool_output(cmd: &mut Command, tool: &str) -> Result<String, BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::io(format!("cannot run {tool}"), e))?;
    if !out.status.success() {
        return Err(BuildError::Tool {
            tool: tool.to_owned(),
            status: out.status.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A UUID-shaped string derived from `seed` (stable across builds of the same recipe).
fn uuid_from(seed: &str) -> String {
    let h = sha256_hex(seed.as_bytes());
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Build the template described by `opts`.
///
/// # Errors
/// [`BuildError`] naming the step, the tool and the fix.
pub fn build(opts: &BuildOptions, progress: Progress) -> Result<Built, BuildError> {
    if !is_root() {
        return Err(BuildError::NeedsRoot);
    }
    if !Path::new(bootdisk::GRUB_DIR).join("boot.img").is_file() {
        return Err(BuildError::MissingTool {
            tool: format!("{}/boot.img", bootdisk::GRUB_DIR),
            package: "grub-pc-bin",
        });
    }
    let agent_bytes = match opts.start {
        AgentStart::Image => Some(fs::read(&opts.agent).map_err(|e| {
            BuildError::io(
                format!(
                    "cannot read the agent {} (build it static: scripts/build-test-guest.sh prints it; or pass --agent)",
                    opts.agent.display()
                ),
                e,
            )
        })?),
        AgentStart::CloudInit => None,
    };
    let out = std::path::absolute(&opts.out)
        .map_err(|e| BuildError::io(format!("cannot resolve {}", opts.out.display()), e))?;
    let dir = out.join(TEMPLATE_SUBDIR);
    cache::open_output(&out)?;
    cache::open_output(&dir)?;
    cache::open_cache(&opts.cache)?;

    let recipe = rootfs::Recipe {
        suite: opts.suite.clone(),
        mirror: opts.mirror.clone(),
        start: opts.start,
        root_uuid: uuid_from(&format!("root {} {:?}", opts.suite, opts.start)),
        epoch: opts.epoch,
    };
    let tar = rootfs::rootfs_tar(&recipe, &opts.cache, progress)?;

    let work = tempfile::Builder::new()
        .prefix("template-build.")
        .tempdir_in(&opts.cache)
        .map_err(|e| {
            BuildError::io(
                format!("cannot create a work dir in {}", opts.cache.display()),
                e,
            )
        })?;
    let root = work.path().join("root");
    fs::create_dir(&root)
        .map_err(|e| BuildError::io(format!("cannot create {}", root.display()), e))?;
    progress("unpacking the root file system");
    let mut untar = Command::new("tar");
    untar
        .args(["--numeric-owner", "--same-permissions", "--xattrs", "-xf"])
        .arg(&tar)
        .arg("-C")
        .arg(&root);
    run_tool(&mut untar, "tar", None)?;
    if let Some(agent) = &agent_bytes {
        install_agent_into(&root, agent, opts.epoch)?;
    }
    let kernel_version = kernel_version(&root)?;
    let cmdline = format!(
        "root=UUID={} ro console=ttyS0 {KERNEL_PARAMS}",
        recipe.root_uuid
    );
    let spec = bootdisk::DiskSpec {
        root: root.clone(),
        size: opts.size,
        uuid: recipe.root_uuid.clone(),
        epoch: opts.epoch,
        kernel: format!("/boot/vmlinuz-{kernel_version}"),
        initrd: format!("/boot/initrd.img-{kernel_version}"),
        cmdline: cmdline.clone(),
    };
    let raw = work.path().join("os.raw");
    bootdisk::make_raw(&spec, &raw, work.path(), progress)?;

    let (os_disk, os_sha256) = write_os_disk(&raw, &dir, progress)?;
    for name in ["vmlinuz", "initrd.img", "cmdline"] {
        let _ = fs::remove_file(dir.join(name));
    }
    if opts.direct_boot {
        write_direct_boot(&root, &dir, &kernel_version, &cmdline)?;
    }
    write_data_disk(&dir)?;
    let classad_template = opts.out.join(CLASSAD_TEMPLATE);
    fs::write(&classad_template, classad_template_text())
        .map_err(|e| BuildError::io(format!("cannot write {}", classad_template.display()), e))?;
    let os_bytes = fs::metadata(&os_disk).map_or(0, |m| m.len());
    Ok(Built {
        os_disk,
        os_sha256,
        os_bytes,
        classad_template,
        kernel_version,
    })
}

/// Convert the raw image to the template's zstd-compressed qcow2 OS disk, with its sha256
/// beside it; returns the disk and the sum.
fn write_os_disk(
    raw: &Path,
    dir: &Path,
    progress: Progress,
) -> Result<(PathBuf, String), BuildError> {
    progress("OS disk: qemu-img convert to zstd-compressed qcow2");
    let os_disk = dir.join(OS_DISK);
    let partial = dir.join(format!(".{OS_DISK}.partial"));
    let _ = fs::remove_file(&partial);
    let mut convert = Command::new("qemu-img");
    convert
        // zstd: six times faster to write than zlib and smaller (QEMU 5.1 and later read it).
        .args([
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
        ])
        .arg(raw)
        .arg(&partial);
    run_tool(&mut convert, "qemu-img", None)?;
    fs::rename(&partial, &os_disk)
        .map_err(|e| BuildError::io(format!("cannot rename {}", partial.display()), e))?;
    progress("OS disk: sha256");
    let os_sha256 = sha256_file(&os_disk)
        .map_err(|e| BuildError::io(format!("cannot read {}", os_disk.display()), e))?;
    let sum_file = dir.join(format!("{OS_DISK}.sha256"));
    fs::write(&sum_file, format!("{os_sha256}  {OS_DISK}\n"))
        .map_err(|e| BuildError::io(format!("cannot write {}", sum_file.display()), e))?;

    Ok((os_disk, os_sha256))
}

/// The template's data disk (a 64 MiB qcow2), unless one is there.
fn write_data_disk(dir: &Path) -> Result<(), BuildError> {
    let data = dir.join("data.qcow2");
    if !data.exists() {
        DataDisk::create(
            &data,
            &CreateOptions::new()
                .size(64 << 20)
                .format(ImageFormat::Qcow2),
        )
        .and_then(DataDisk::finish)
        .map_err(|e| BuildError::Invalid {
            what: "data disk",
            value: data.display().to_string(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// Put the agent and its unit into an unpacked root and enable the unit; what changed gets
/// the epoch as its modification time (same inputs, same image).
fn install_agent_into(root: &Path, agent: &[u8], epoch: u64) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<(), BuildError> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| BuildError::io(format!("cannot create {}", parent.display()), e))?;
        }
        fs::write(&path, bytes)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
            .map_err(|e| BuildError::io(format!("cannot write {}", path.display()), e))
    };
    put(AGENT_PATH, agent, 0o755)?;
    put(UNIT_PATH, UNIT_FILE.as_bytes(), 0o644)?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)
        .map_err(|e| BuildError::io(format!("cannot create {}", wants.display()), e))?;
    let link = wants.join("capsule-init.service");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("/{UNIT_PATH}"), &link)
        .map_err(|e| BuildError::io(format!("cannot create {}", link.display()), e))?;
    let mut touch = Command::new("touch");
    touch.arg("-h").arg(format!("--date=@{epoch}"));
    for rel in [
        AGENT_PATH,
        "usr/local/sbin",
        UNIT_PATH,
        "etc/systemd/system",
        "etc/systemd/system/multi-user.target.wants",
        "etc/systemd/system/multi-user.target.wants/capsule-init.service",
    ] {
        touch.arg(root.join(rel));
    }
    run_tool(&mut touch, "touch", None)
}

/// The version of the one kernel in `/boot`.
fn kernel_version(root: &Path) -> Result<String, BuildError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| BuildError::io(format!("cannot read {}", boot.display()), e))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    versions.sort();
    match versions.as_slice() {
        [one] if boot.join(format!("initrd.img-{one}")).is_file() => Ok(one.clone()),
        _ => Err(BuildError::Invalid {
            what: "kernel",
            value: format!("{versions:?} in {}", boot.display()),
            why: "expected exactly one kernel with its initrd in the image".to_owned(),
        }),
    }
}

/// The image's own kernel and initrd beside the OS disk, with the same command line GRUB
/// uses, so the template can also be booted directly (`vmlinuz` + `initrd.img` + `cmdline`).
fn write_direct_boot(
    root: &Path,
    dir: &Path,
    version: &str,
    cmdline: &str,
) -> Result<(), BuildError> {
    for (from, to) in [
        (format!("boot/vmlinuz-{version}"), "vmlinuz"),
        (format!("boot/initrd.img-{version}"), "initrd.img"),
    ] {
        fs::copy(root.join(&from), dir.join(to))
            .map_err(|e| BuildError::io(format!("cannot copy {from} into {}", dir.display()), e))?;
    }
    fs::write(dir.join("cmdline"), format!("{cmdline} panic=-1\n"))
        .map_err(|e| BuildError::io(format!("cannot write {}/cmdline", dir.display()), e))
}

/// What `condor_submit -dump` prints for the VM submit file this template goes with.
fn classad_template_text() -> String {
    "JobVMType = \"kvm\"\nJobVMMemory = 512\nJobVM_VCPUS = 1\nJobVMNetworking = false\n".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid_from("x");
        assert_eq!(a, uuid_from("x"));
        assert_ne!(a, uuid_from("y"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_tool_log_is_a_new_file_never_written_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, "precious\n").unwrap();
        let log = d.path().join("tool.log");
        std::os::unix::fs::symlink(&target, &log).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo from the tool"]);
        run_tool(&mut cmd, "sh", Some(&log)).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(fs::symlink_metadata(&log).unwrap().is_file());
        assert_eq!(fs::read_to_string(&log).unwrap(), "from the tool\n");
    }

    #[test]
    fn the_unit_runs_the_agent_by_label_and_powers_off() {
        assert!(UNIT_FILE.contains(&format!("ExecStart=/{AGENT_PATH} --label CONDORDATA")));
        assert!(UNIT_FILE.contains("FailureAction=poweroff-force"));
        assert!(UNIT_FILE.contains("SuccessAction=poweroff-force"));
    }
}
