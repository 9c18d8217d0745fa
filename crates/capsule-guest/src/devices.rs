//! The VM's virtio devices the agent needs (the NIC, the 9p shares, the control port) have
//! their drivers before the job starts. As a systemd unit the agent starts once the local
//! file systems are mounted, which can be before udev has loaded those drivers (modules in a
//! distribution's kernel): the NIC, the shares and the port would then simply be missing. So
//! the agent loads the driver of each such device that has none yet (as udev would, by its
//! modalias), waits for it to bind, and lets udev finish naming the NIC.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the kernel lists virtio devices.
const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
/// Virtio device IDs the agent uses: network card, console (the control port), 9p transport.
const WANTED: &[u32] = &[1, 3, 9];
/// Longest wait for the drivers to bind.
const WAIT_FOR: Duration = Duration::from_secs(20);

/// Read at most `limit` bytes of a small sysfs file, trimmed.
fn read_small(path: &Path, limit: u64) -> Option<String> {
    let mut s = String::new();
    File::open(path)
        .ok()?
        .take(limit)
        .read_to_string(&mut s)
        .ok()?;
    Some(s.trim().to_owned())
}

/// The wanted devices under `root` that have no driver yet, with their modalias.
fn unbound(root: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(256)
        .map(|e| e.path())
        .filter(|dev| {
            read_small(&dev.join("device"), 16)
                .and_then(|id| u32::from_str_radix(id.trim_start_matches("0x"), 16).ok())
                .is_some_and(|id| WANTED.contains(&id))
        })
        .filter(|dev| !dev.join("driver").exists())
        .map(|dev| {
            let alias = read_small(&dev.join("modalias"), 128).unwrap_or_default();
            (dev, alias)
        })
        .collect()
}

/// Run a helper program quietly; whether it ran and succeeded.
fn quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Give the wanted virtio devices their drivers (not needed as init: the bare initramfs that
/// runs the agent as PID 1 loads them itself). Problems are logged, never fatal: a device
/// still without a driver is then reported by what needs it.
pub fn await_drivers() {
    if std::process::id() == 1 {
        return;
    }
    let start = Instant::now();
    let missing = unbound(Path::new(VIRTIO_DEVICES));
    if missing.is_empty() {
        return;
    }
    for (_, alias) in &missing {
        if alias.starts_with("virtio:") {
            quietly("modprobe", &["-q", alias]);
        }
    }
    while !unbound(Path::new(VIRTIO_DEVICES)).is_empty() && start.elapsed() < WAIT_FOR {
        std::thread::sleep(Duration::from_millis(50));
    }
    // udev may still rename the new NIC: the network code must see its final name.
    quietly("udevadm", &["settle", "--timeout=10"]);
    let left = unbound(Path::new(VIRTIO_DEVICES));
    crate::log!(
        "devices: {} virtio driver(s) were not loaded yet; {} after {:.1} ms",
        missing.len(),
        if left.is_empty() {
            "all bound".to_owned()
        } else {
            format!("{} still without a driver", left.len())
        },
        start.elapsed().as_secs_f64() * 1e3
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_wanted_devices_without_a_driver_are_listed() {
        let d = tempfile::tempdir().unwrap();
        for (name, id, bound) in [
            ("virtio0", "0x0001", false),
            ("virtio1", "0x0002", false),
            ("virtio2", "0x0009", true),
            ("virtio3", "0x0003", false),
        ] {
            let dev = d.path().join(name);
            std::fs::create_dir(&dev).unwrap();
            std::fs::write(dev.join("device"), format!("{id}\n")).unwrap();
            std::fs::write(dev.join("modalias"), format!("virtio:d{id}v00001AF4\n")).unwrap();
            if bound {
                std::fs::create_dir(dev.join("driver")).unwrap();
            }
        }
        let mut got: Vec<_> = unbound(d.path())
            .into_iter()
            .map(|(p, a)| (p.file_name().unwrap().to_string_lossy().into_owned(), a))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("virtio0".to_owned(), "virtio:d0x0001v00001AF4".to_owned()),
                ("virtio3".to_owned(), "virtio:d0x0003v00001AF4".to_owned()),
            ]
        );
        assert!(unbound(&d.path().join("none")).is_empty());
    }
}
