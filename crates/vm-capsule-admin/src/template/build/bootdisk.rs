//! A BIOS-bootable disk image from a root directory, without loop devices, mounts or
//! `grub-install`: `mke2fs -d` writes the ext4 file system straight into the image file at the
//! partition's offset, the MBR comes from `capsule-disk`, and GRUB's `boot.img` and a
//! `core.img` made by `grub-mkimage` (with the boot commands embedded, so no `grub.cfg` and no
//! `normal` module are read at boot) are written into the MBR and the gap after it, which is
//! what `grub-bios-setup` would do but refuses to do on a plain file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::partition;

use super::{run_tool, BuildError, Progress};

/// Byte offset of the root partition: 1 MiB, as every partitioning tool aligns it; the gap
/// before it holds GRUB's core image.
pub const PART_OFFSET: u64 = 1 << 20;

/// Where Debian's `grub-pc-bin` keeps the BIOS boot images and modules.
pub const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";

/// GRUB modules the core image needs to find the kernel on the ext4 root, start it, and say
/// on the serial console what went wrong if it cannot.
const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_msdos",
    "ext2",
    "search",
    "linux16",
    "serial",
    "terminal",
];

/// What goes on the disk.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The root file system's contents (owned as they must be in the image).
    pub root: PathBuf,
    /// Virtual size of the disk, bytes.
    pub size: u64,
    /// File system UUID (also its hash seed, for reproducible directory hashing).
    pub uuid: String,
    /// Every time stamp mke2fs writes.
    pub epoch: u64,
    /// Kernel and initrd, as paths inside the root (`/boot/vmlinuz-6.1.0-13-amd64`).
    pub kernel: String,
    /// Initrd inside the root.
    pub initrd: String,
    /// Kernel command line.
    pub cmdline: String,
}

/// Write the bootable raw image `raw` (must not exist).
///
/// # Errors
/// [`BuildError`] when a tool fails or the result would not boot (core image too large).
pub fn make_raw(
    spec: &DiskSpec,
    raw: &Path,
    work: &Path,
    progress: Progress,
) -> Result<(), BuildError> {
    let io = |what: &str| {
        let what = format!("{what} {}", raw.display());
        move |e| BuildError::io(what, e)
    };
    let fs_bytes = spec
        .size
        .checked_sub(PART_OFFSET)
        .filter(|b| *b >= 256 << 20)
        .ok_or(BuildError::Invalid {
            what: "size",
            value: spec.size.to_string(),
            why: "the OS disk must be at least 257 MiB".to_owned(),
        })?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(raw)
        .map_err(io("cannot create"))?;
    file.set_len(spec.size).map_err(io("cannot size"))?;
    drop(file);

    progress(&format!(
        "file system: mke2fs -d, {} MiB ext4 at byte {PART_OFFSET}",
        fs_bytes >> 20
    ));
    let device = format!("{}?offset={PART_OFFSET}", raw.display());
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .env("E2FSPROGS_FAKE_TIME", spec.epoch.to_string())
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "capsule-root",
            "-U",
            &spec.uuid,
        ])
        .arg("-E")
        .arg(format!(
            "offset={PART_OFFSET},hash_seed={},root_owner=0:0",
            spec.uuid
        ))
        .arg("-d")
        .arg(&spec.root)
        .arg(raw)
        .arg(format!("{}k", fs_bytes / 1024));
    run_tool(&mut mke2fs, "mke2fs", None)?;
    fix_times(&device, spec.epoch, work)?;

    progress("boot loader: grub-mkimage core image + boot.img in the MBR");
    let core = core_image(spec, work)?;
    // The core image lives between the MBR and the partition.
    let room = PART_OFFSET - 512;
    if u64::try_from(core.len()).unwrap_or(u64::MAX) > room {
        return Err(BuildError::Invalid {
            what: "GRUB core image",
            value: format!("{} bytes", core.len()),
            why: format!("must fit the {room} bytes before the partition"),
        });
    }
    let boot_img = fs::read(Path::new(GRUB_DIR).join("boot.img"))
        .map_err(|e| BuildError::io(format!("cannot read {GRUB_DIR}/boot.img"), e))?;
    let code = boot_img.get(..440).ok_or(BuildError::Invalid {
        what: "boot.img",
        value: format!("{} bytes", boot_img.len()),
        why: "GRUB's boot.img must be a 512-byte sector".to_owned(),
    })?;
    let disk_id = u32::from_str_radix(spec.uuid.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    let mut mbr = partition::build_mbr(spec.size, PART_OFFSET, 0x83, disk_id).map_err(|e| {
        BuildError::Invalid {
            what: "partition table",
            value: spec.size.to_string(),
            why: e.to_string(),
        }
    })?;
    mbr[..440].copy_from_slice(code);
    mbr[446] = 0x80; // active: some BIOSes only boot a disk with an active partition
    let mut f = OpenOptions::new()
        .write(true)
        .open(raw)
        .map_err(io("cannot open"))?;
    f.write_all(&mbr).map_err(io("cannot write the MBR of"))?;
    f.seek(SeekFrom::Start(512)).map_err(io("cannot seek in"))?;
    f.write_all(&core)
        .map_err(io("cannot write GRUB's core image to"))?;
    Ok(())
}

/// `grub-mkimage` with the boot commands embedded: talk on the serial port, find the root by
/// UUID, load the image's own kernel and initrd, boot. (The embedded commands run in GRUB's
/// rescue parser: plain commands only.) `linux16` starts the kernel through its real-mode
/// entry, as QEMU's own direct kernel boot does; under TCG the kernel then reached its first
/// message 1-2 s sooner than through `linux`'s 32-bit entry (docs/PERFORMANCE.md).
fn core_image(spec: &DiskSpec, work: &Path) -> Result<Vec<u8>, BuildError> {
    let cfg = work.join("early.cfg");
    let out = work.join("core.img");
    let text = format!(
        "serial --unit=0 --speed=115200\nterminal_output serial\n\
         search --no-floppy --fs-uuid --set=root {}\nlinux16 {} {}\ninitrd16 {}\nboot\n",
        spec.uuid, spec.kernel, spec.cmdline, spec.initrd
    );
    fs::write(&cfg, text)
        .map_err(|e| BuildError::io(format!("cannot write {}", cfg.display()), e))?;
    let mut cmd = Command::new("grub-mkimage");
    cmd.args(["-O", "i386-pc", "-d", GRUB_DIR])
        .arg("-c")
        .arg(&cfg)
        .arg("-o")
        .arg(&out)
        // Only used if the embedded commands fail: GRUB then looks here for more modules.
        .args(["-p", "/boot/grub"])
        .args(GRUB_MODULES);
    run_tool(&mut cmd, "grub-mkimage", None)?;
    let mut core = Vec::new();
    File::open(&out)
        .and_then(|mut f| f.read_to_end(&mut core))
        .map_err(|e| BuildError::io(format!("cannot read {}", out.display()), e))?;
    Ok(core)
}

/// mke2fs 1.47.0 copies each inode's ctime and atime from the source tree, which says when the
/// tree was unpacked: set them to the epoch so the same inputs give the same image. It
/// allocates inodes in order from the first non-reserved one, so the used ones are known.
fn fix_times(device: &str, epoch: u64, work: &Path) -> Result<(), BuildError> {
    let mut dumpe2fs = Command::new("dumpe2fs");
    dumpe2fs.args(["-h", device]);
    let header = super::tool_output(&mut dumpe2fs, "dumpe2fs")?;
    let field = |name: &str| -> Option<u64> {
        header
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let (Some(count), Some(free), Some(first)) = (
        field("Inode count:"),
        field("Free inodes:"),
        field("First inode:"),
    ) else {
        return Err(BuildError::Invalid {
            what: "dumpe2fs output",
            value: device.to_owned(),
            why: "no inode counts in it".to_owned(),
        });
    };
    let last = count.saturating_sub(free);
    let mut script = String::new();
    for ino in [2, first].into_iter().chain(first + 1..=last) {
        for field in ["ctime", "atime"] {
            script.push_str(&format!("sif <{ino}> {field} {epoch}\n"));
        }
    }
    let path = work.join("times.debugfs");
    fs::write(&path, script)
        .map_err(|e| BuildError::io(format!("cannot write {}", path.display()), e))?;
    let mut debugfs = Command::new("debugfs");
    debugfs
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&path)
        .arg(device);
    run_tool(&mut debugfs, "debugfs", None)
}
