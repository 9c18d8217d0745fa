//! The VM's virtio devices the agent needs (the NIC, the 9p shares, the control port) have
//! their drivers before the job starts. As a systemd unit the agent starts once the local
//! file systems are mounted, which can be before udev has loaded those drivers (modules in a
//! distribution's kernel): the NIC, the shares and the port would then simply be missing. So
//! the agent loads the driver of each such device that has none yet (as udev would, by its
//! modalias), waits for it to bind, and for udev to have named the NIC (it renames it).

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
    for (_, alias) in &missing {
        if alias.starts_with("virtio:") {
            quietly("modprobe", &["-q", alias]);
        }
    }
    while !missing.is_empty()
        && !unbound(Path::new(VIRTIO_DEVICES)).is_empty()
        && start.elapsed() < WAIT_FOR
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let bound = start.elapsed();
    let named = await_nic_names(Path::new(SYS_NET), Path::new(UDEV_DATA));
    if !missing.is_empty() || !named {
        let left = unbound(Path::new(VIRTIO_DEVICES)).len();
        crate::log!(
            "devices: {} virtio driver(s) were not loaded yet, {} after {:.1} ms; NIC names {} after {:.1} ms",
            missing.len(),
            if left == 0 { "all bound".to_owned() } else { format!("{left} still without a driver") },
            bound.as_secs_f64() * 1e3,
            if named { "final" } else { "not confirmed by udev" },
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Where the kernel lists network interfaces.
const SYS_NET: &str = "/sys/class/net";
/// udev's database: `n<ifindex>` is written once udev has handled (and renamed) that NIC.
const UDEV_DATA: &str = "/run/udev/data";

/// The Ethernet interfaces' indexes under `sys_net` that udev's database under `udev_data`
/// does not know yet.
fn unnamed(sys_net: &Path, udev_data: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_net) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(64)
        .map(|e| e.path())
        .filter(|nic| read_small(&nic.join("type"), 16).is_some_and(|t| t == "1"))
        .filter_map(|nic| read_small(&nic.join("ifindex"), 16))
        .filter(|i| i.bytes().all(|b| b.is_ascii_digit()))
        .filter(|i| !udev_data.join(format!("n{i}")).exists())
        .collect()
}

/// Wait until udev has handled every Ethernet interface (so it will not rename one under the
/// network code); `true` when it has, or when no udev runs. Unlike `udevadm settle`, this does
/// not wait for udev's whole start-up queue (7 s under TCG).
fn await_nic_names(sys_net: &Path, udev_data: &Path) -> bool {
    if !Path::new("/run/udev/control").exists() {
        return true;
    }
    let start = Instant::now();
    while !unnamed(sys_net, udev_data).is_empty() {
        if start.elapsed() >= NAME_WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Longest wait for udev to name the NICs.
const NAME_WAIT: Duration = Duration::from_secs(10);

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

    #[test]
    fn nics_udev_has_not_handled_are_listed() {
        let d = tempfile::tempdir().unwrap();
        let (net, data) = (d.path().join("net"), d.path().join("data"));
        for (name, kind, index) in [("lo", "772", "1"), ("eth0", "1", "2"), ("ens4", "1", "3")] {
            std::fs::create_dir_all(net.join(name)).unwrap();
            std::fs::write(net.join(name).join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(net.join(name).join("ifindex"), format!("{index}\n")).unwrap();
        }
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("n3"), "").unwrap();
        assert_eq!(unnamed(&net, &data), vec!["2".to_owned()]);
        std::fs::write(data.join("n2"), "").unwrap();
        assert!(unnamed(&net, &data).is_empty());
    }
}
