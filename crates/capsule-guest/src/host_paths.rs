//! Before the job: mount the execute node's read-only host paths at the same paths in the
//! guest, as the node settings in fw_cfg list them (`capsule_manifest::node`).
//!
//! The host is trusted by the guest, but its text is still read bounded and parsed strictly.
//! Each share is mounted read-only, `nosuid` and `nodev`, so a set-uid file or a device node in
//! a share gives the job nothing; the job runs as an unprivileged user and can neither unmount
//! nor mount over it. A link in a share is resolved by this kernel, in the guest's tree: QEMU's
//! file server never follows it on the host.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsule_manifest::node::{NodeSettings, Transport, FW_CFG_NAME, MAX_NODE_BYTES};
use nix::mount::{mount, MsFlags};

/// Where the kernel's `qemu_fw_cfg` driver shows QEMU's firmware configuration.
const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg";
/// QEMU's fw_cfg device as ACPI lists it: present means the host has the device.
const FW_CFG_ACPI: &str = "/sys/bus/acpi/devices/QEMU0002:00";
/// Where 9p devices show their mount tags.
const NINEP_DEVICES: &str = "/sys/bus/virtio/drivers/9pnet_virtio";
/// How long the driver may take to appear (loaded by udev, or here).
const WAIT_FOR: Duration = Duration::from_secs(5);
/// 9p's largest message: bigger reads per round trip (the virtio transport's limit is 512 KiB).
const NINEP_MSIZE: u32 = 512 * 1024;

/// Mount every host path the node lists; returns the paths mounted.
///
/// # Errors
/// The node lists a path that cannot be mounted, its settings are malformed, or it shares
/// paths this guest cannot learn about (no `qemu_fw_cfg` driver): the job must not run
/// without a path it may rely on.
pub fn mount_all() -> Result<Vec<String>> {
    let Some(bytes) = read_node_settings()? else {
        if let Some(tag) = shared_tags().into_iter().next() {
            bail!(
                "the host shares a path (9p tag {tag}) but this guest cannot read which: its kernel has no qemu_fw_cfg driver (load the qemu_fw_cfg module at boot)"
            );
        }
        return Ok(Vec::new());
    };
    let settings = NodeSettings::parse(&bytes).context("the node settings from fw_cfg")?;
    let mut mounted = Vec::new();
    for h in &settings.host_paths {
        let start = Instant::now();
        fs::create_dir_all(&h.path)
            .with_context(|| format!("cannot create the mount point {} for a host path", h.path))?;
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let data = match h.transport {
            Transport::NineP => format!("trans=virtio,version=9p2000.L,msize={NINEP_MSIZE}"),
            Transport::Virtiofs => String::new(),
        };
        mount(
            Some(h.tag.as_str()),
            Path::new(&h.path),
            Some(h.transport.word()),
            flags,
            Some(data.as_str()),
        )
        .with_context(|| {
            format!(
                "cannot mount the host path {} ({} tag {}); does the guest kernel have the {} driver?",
                h.path,
                h.transport.word(),
                h.tag,
                h.transport.word()
            )
        })?;
        crate::log!(
            "host path {} mounted read-only ({}, {:.1} ms)",
            h.path,
            h.transport.word(),
            start.elapsed().as_secs_f64() * 1e3
        );
        mounted.push(h.path.clone());
    }
    Ok(mounted)
}

/// The node settings' bytes, `None` when the host gave none (or this guest cannot see
/// fw_cfg). Read bounded: one byte over the limit is refused by the parser.
fn read_node_settings() -> Result<Option<Vec<u8>>> {
    // Without the driver, wait for it only when the host shares something: a guest with no
    // share must not pay for a driver it does not need.
    if !Path::new(FW_CFG_DIR).exists()
        && Path::new(FW_CFG_ACPI).exists()
        && !shared_tags().is_empty()
    {
        // A distribution's udev loads the driver by itself, perhaps not yet; try once here.
        let _ = Command::new("modprobe")
            .arg("qemu_fw_cfg")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while !Path::new(FW_CFG_DIR).exists() && start.elapsed() < WAIT_FOR {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let raw = format!("{FW_CFG_DIR}/by_name/{FW_CFG_NAME}/raw");
    let file = match File::open(&raw) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {raw}")),
    };
    let mut bytes = Vec::new();
    file.take(u64::try_from(MAX_NODE_BYTES).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {raw}"))?;
    Ok(Some(bytes))
}

/// The mount tags of the 9p devices the host attached (bounded: the first 64 devices).
fn shared_tags() -> Vec<String> {
    let Ok(entries) = fs::read_dir(NINEP_DEVICES) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(64)
        .filter_map(|e| {
            let mut tag = String::new();
            File::open(e.path().join("mount_tag"))
                .ok()?
                .take(64)
                .read_to_string(&mut tag)
                .ok()?;
            Some(tag.trim_end_matches(['\0', '\n']).to_owned())
        })
        .collect()
}
