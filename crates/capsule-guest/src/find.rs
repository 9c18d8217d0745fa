//! Find the data disk by its FAT volume label, without udev: list the kernel's block devices in
//! `/sys/class/block`, and read each whole disk's partition table and FAT boot sector from the
//! device node devtmpfs made for it.
//!
//! A full distribution names disks in many ways (`vdb`, `sdb`, `xvdb`, `nvme0n1`) and udev
//! creates `/dev/disk/by-label/` links seconds after the kernel created the device; reading
//! the label ourselves needs neither, so the agent can start as soon as the disk exists.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsule_disk::partition;

/// Where the kernel lists block devices, and where their nodes are.
#[derive(Debug, Clone)]
pub struct Places {
    /// `/sys/class/block`.
    pub sys_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
}

impl Default for Places {
    fn default() -> Self {
        Places {
            sys_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// What one block device turned out to be, for the message when nothing matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A FAT volume with this label (trimmed; empty when it has none).
    Fat(String),
    /// Readable, but no FAT volume on it.
    NotFat,
    /// The node could not be opened or read.
    Unreadable(String),
}

/// Kernel device names never worth opening: RAM disks, loop and network block devices, device
/// mapper and md arrays (never a data disk), floppies and optical drives (probing an empty one
/// can stall for seconds).
const SKIPPED_PREFIXES: [&str; 8] = ["loop", "ram", "zram", "nbd", "dm-", "md", "fd", "sr"];

/// Whole disks of non-zero size the kernel lists, sorted by name.
fn whole_disks(places: &Places) -> Vec<String> {
    let Ok(entries) = fs::read_dir(&places.sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !SKIPPED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .filter(|n| {
            let dir = places.sys_block.join(n);
            // Partitions are read through their disk's partition table.
            !dir.join("partition").exists()
                && fs::read_to_string(dir.join("size"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .is_some_and(|sectors| sectors > 0)
        })
        .collect();
    names.sort();
    names
}

/// The label of the FAT volume the agent would use on this disk (the first FAT partition, or
/// the whole disk when it has no partition table); `Ok(None)` when there is none.
///
/// # Errors
/// I/O errors reading the disk.
pub fn volume_label<D: Read + Seek>(disk: &mut D, path: &Path) -> io::Result<Option<String>> {
    let size = disk.seek(SeekFrom::End(0))?;
    let mut read_at = |off: u64, buf: &mut [u8]| -> io::Result<()> {
        disk.seek(SeekFrom::Start(off))?;
        disk.read_exact(buf)
    };
    let Ok(table) = partition::read_table(&mut read_at, size, path) else {
        return Ok(None);
    };
    let mut boot = [0u8; 512];
    let found = table.find_fat(None, size, path, &mut |p| {
        read_at(p.start, &mut boot).is_ok() && fat_label(&boot).is_some()
    });
    let Ok(part) = found else {
        return Ok(None);
    };
    read_at(part.start, &mut boot)?;
    Ok(fat_label(&boot))
}

/// The volume label in a FAT boot sector (FAT12/16 or FAT32 layout), trimmed; `None` when the
/// sector is not a FAT boot sector with an extended boot signature.
fn fat_label(sector: &[u8; 512]) -> Option<String> {
    let jump = matches!(sector[0], 0xeb | 0xe9);
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    if !jump
        || !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        || sector[510..] != [0x55, 0xaa]
    {
        return None;
    }
    // FAT32 has no 16-bit FAT size; its extended BPB starts 28 bytes later.
    let fat32 = u16::from_le_bytes([sector[22], sector[23]]) == 0;
    let (signature, label) = if fat32 { (66, 71) } else { (38, 43) };
    if sector[signature] != 0x29 {
        return None;
    }
    let text = String::from_utf8_lossy(&sector[label..label + 11]);
    Some(text.trim_end().to_owned())
}

/// Look at every whole disk once; the device whose FAT label is `label` (ignoring case, as
/// FAT stores labels upper case), and what each of the others was.
pub fn scan(label: &str, places: &Places) -> (Option<PathBuf>, Vec<(String, Seen)>) {
    let mut seen = Vec::new();
    for name in whole_disks(places) {
        let path = places.dev.join(&name);
        let what = match File::open(&path) {
            Err(e) => Seen::Unreadable(e.to_string()),
            Ok(mut f) => match volume_label(&mut f, &path) {
                Err(e) => Seen::Unreadable(e.to_string()),
                Ok(None) => Seen::NotFat,
                Ok(Some(l)) if l.eq_ignore_ascii_case(label) => return (Some(path), seen),
                Ok(Some(l)) => Seen::Fat(l),
            },
        };
        seen.push((name, what));
    }
    (None, seen)
}

/// No disk with the label appeared in time.
#[derive(Debug)]
pub struct NotFound {
    /// The label looked for.
    pub label: String,
    /// How long it was waited for.
    pub waited: Duration,
    /// What the disks seen last were.
    pub seen: Vec<(String, Seen)>,
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seen: Vec<String> = self
            .seen
            .iter()
            .map(|(name, what)| match what {
                Seen::Fat(l) if l.is_empty() => format!("{name} (FAT, no label)"),
                Seen::Fat(l) => format!("{name} (FAT label {l:?})"),
                Seen::NotFat => format!("{name} (no FAT volume)"),
                Seen::Unreadable(e) => format!("{name} (unreadable: {e})"),
            })
            .collect();
        write!(
            f,
            "no data disk labelled {} after {} s; block devices seen: {}; hint: attach the data disk, or pass its label with --label",
            self.label,
            self.waited.as_secs(),
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        )
    }
}

impl std::error::Error for NotFound {}

/// Poll until a disk labelled `label` appears (disks can show up after the agent starts),
/// at most `wait`.
///
/// # Errors
/// [`NotFound`] with what was seen.
pub fn wait_for(label: &str, wait: Duration, places: &Places) -> Result<PathBuf, NotFound> {
    let start = Instant::now();
    loop {
        let (found, seen) = scan(label, places);
        if let Some(path) = found {
            return Ok(path);
        }
        if start.elapsed() >= wait {
            return Err(NotFound {
                label: label.to_owned(),
                waited: start.elapsed(),
                seen,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use capsule_disk::{CreateOptions, DataDisk};

    /// A fake `/sys/class/block` + `/dev` pair holding image files as "devices".
    fn places(dir: &Path) -> Places {
        let p = Places {
            sys_block: dir.join("sys"),
            dev: dir.join("dev"),
        };
        fs::create_dir_all(&p.sys_block).unwrap();
        fs::create_dir_all(&p.dev).unwrap();
        p
    }

    fn add_device(p: &Places, name: &str, content: Option<&Path>, partition: bool) {
        let sys = p.sys_block.join(name);
        fs::create_dir_all(&sys).unwrap();
        fs::write(sys.join("size"), "131072\n").unwrap();
        if partition {
            fs::write(sys.join("partition"), "1\n").unwrap();
        }
        match content {
            Some(src) => {
                fs::copy(src, p.dev.join(name)).unwrap();
            }
            None => fs::write(p.dev.join(name), vec![0u8; 1 << 20]).unwrap(),
        }
    }

    fn disk(dir: &Path, name: &str, opts: &CreateOptions) -> PathBuf {
        let path = dir.join(name);
        DataDisk::create(&path, opts).unwrap().finish().unwrap();
        path
    }

    #[test]
    fn labels_of_fat16_fat32_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        for (size, offset, label) in [
            (64u64 << 20, 1u64 << 20, "CONDORDATA"),
            (600 << 20, 32256, "cidata"),
            (64 << 20, 32256, "Mixed Case"),
        ] {
            let path = disk(
                dir.path(),
                "d.img",
                &CreateOptions::new()
                    .size(size)
                    .partition_offset(offset)
                    .label(label),
            );
            let mut f = File::open(&path).unwrap();
            let got = volume_label(&mut f, &path).unwrap();
            assert_eq!(got.as_deref(), Some(label.to_ascii_uppercase().as_str()));
            fs::remove_file(&path).unwrap();
        }
        // Not FAT at all.
        let zeros = dir.path().join("zeros");
        fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
        let mut f = File::open(&zeros).unwrap();
        assert_eq!(volume_label(&mut f, &zeros).unwrap(), None);
    }

    #[test]
    fn finds_the_labelled_disk_among_others_ignoring_case() {
        let dir = tempfile::tempdir().unwrap();
        let p = places(dir.path());
        let other = disk(dir.path(), "o.img", &CreateOptions::new().label("OTHER"));
        let data = disk(dir.path(), "d.img", &CreateOptions::new().label("cidata"));
        add_device(&p, "vda", None, false); // an OS disk: no FAT
        add_device(&p, "vda1", Some(&data), true); // partitions are skipped
        add_device(&p, "loop0", Some(&data), false); // so are loop devices
        add_device(&p, "sdb", Some(&other), false);
        assert_eq!(scan("CIDATA", &p).0, None);
        add_device(&p, "xvdc", Some(&data), false);
        let (found, seen) = scan("CIDATA", &p);
        assert_eq!(found, Some(p.dev.join("xvdc")));
        assert_eq!(
            seen,
            vec![
                ("sdb".to_owned(), Seen::Fat("OTHER".into())),
                ("vda".to_owned(), Seen::NotFat)
            ]
        );
    }

    #[test]
    fn waits_then_names_what_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let p = places(dir.path());
        add_device(&p, "vda", None, false);
        let err = wait_for("CONDORDATA", Duration::from_millis(120), &p).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("no data disk labelled CONDORDATA after 0 s; block devices seen: vda (no FAT volume)"),
            "{text}"
        );
        // A disk that shows up late is found.
        let data = disk(dir.path(), "d.img", &CreateOptions::new());
        let late = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            add_device(&late, "vdb", Some(&data), false);
        });
        let found = wait_for("condordata", Duration::from_secs(10), &p).unwrap();
        t.join().unwrap();
        assert_eq!(found, p.dev.join("vdb"));
    }
}
