//! Network on request: the host gives the VM a NIC only when the job asked for a network and
//! the node allows one, so a NIC means "bring it up before the job starts"; no NIC, no
//! network, and the job starts at once.
//!
//! Who configures it: when the agent is the guest's init (PID 1: a bare initramfs like the
//! test guest) nothing else will, so it asks the node's network for an address with DHCP
//! (served alike by `passt`, QEMU's slirp and libvirt's dnsmasq; the data disk is made on the
//! submit side and cannot know the node's network) and sets the address, the default route
//! and `/etc/resolv.conf`. Under an init system the image's own network manager
//! (systemd-networkd, ifupdown, cloud-init's network-config) is given the first
//! [`MANAGER_GRACE`] to do it; only an interface still without an address after that is
//! configured by the agent, so the two never fight. Either way the job starts only once the
//! interface has an address and a default route, or fails after [`DEADLINE`] with a message.

mod dhcp;
mod sys;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Longest wait for the network before the job fails.
pub const DEADLINE: Duration = Duration::from_secs(90);
/// How long an init system's network manager has before the agent configures the interface.
const MANAGER_GRACE: Duration = Duration::from_secs(15);
/// Where network interfaces are listed.
const SYS_NET: &str = "/sys/class/net";

/// Bring the network up when the VM has a NIC; `Ok(None)`: it has none.
///
/// # Errors
/// The NIC got no address or no default route in time (the message says which and why).
pub fn bring_up() -> Result<Option<String>> {
    // Local services (a job's own server on localhost) need lo, which a bare init leaves down.
    if let Err(e) = sys::set_up("lo") {
        crate::log!("network: cannot bring lo up: {e}");
    }
    let Some(nic) = first_ethernet(Path::new(SYS_NET)) else {
        crate::log!("network: no network interface (the job did not ask for one)");
        return Ok(None);
    };
    let start = Instant::now();
    let init = std::process::id() == 1;
    // An interface that already has an address is the image's (or a host's, when the agent
    // is run outside a VM): never reconfigured, only waited for.
    let configured = sys::address(&nic).ok().flatten().is_some();
    let done = if (init || !manager_present(Path::new("/"))) && !configured {
        configure(&nic, start)?
    } else {
        wait_for_manager(&nic, start)?
    };
    crate::log!(
        "network: {nic} up in {:.1} ms: {done}",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(Some(done))
}

/// The first Ethernet interface (`type` 1) other than `lo`, by name.
fn first_ethernet(sys_net: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .filter(|n| {
            std::fs::read_to_string(sys_net.join(n).join("type")).is_ok_and(|t| t.trim() == "1")
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Traces of the network managers images use, running or enabled to start (the agent's unit
/// starts before them): systemd-networkd, ifupdown, NetworkManager, cloud-init (which
/// configures the network itself, or hands it to one of these).
const MANAGERS: [&str; 8] = [
    // networkd's state file, not its directory: systemd's tmpfiles makes the directory on
    // every boot, networkd running or not.
    "run/systemd/netif/state",
    "run/network",
    "run/NetworkManager",
    "run/cloud-init",
    "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    "etc/systemd/system/multi-user.target.wants/networking.service",
    "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
    "etc/cloud/cloud.cfg",
];

/// Whether a network manager of the image runs (or ran) under `root`.
fn manager_present(root: &Path) -> bool {
    MANAGERS.iter().any(|m| root.join(m).exists())
}

/// Under an init system: wait for the image's manager, then configure it ourselves when it
/// left the interface without an address.
fn wait_for_manager(nic: &str, start: Instant) -> Result<String> {
    loop {
        let address = sys::address(nic).ok().flatten();
        if let (Some(a), Some(gw)) = (address, sys::default_gateway()) {
            return Ok(format!("{a} via {gw} (configured by the guest image)"));
        }
        if address.is_none() && start.elapsed() >= MANAGER_GRACE {
            crate::log!(
                "network: nothing configured {nic} in {} s; asking DHCP",
                MANAGER_GRACE.as_secs()
            );
            return configure(nic, start);
        }
        if start.elapsed() >= DEADLINE {
            bail!(
                "the job asked for a network and {nic} has {} after {} s (the guest image's network manager configured it only in part)",
                address.map_or("no address".to_owned(), |a| format!("address {a} but no default route")),
                DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// DHCP on `nic`, then address, MTU, default route and resolver.
fn configure(nic: &str, start: Instant) -> Result<String> {
    sys::set_up(nic).with_context(|| format!("network: cannot bring {nic} up"))?;
    wait_for_link(nic, start);
    let lease = lease(nic, start)?;
    let mask = lease
        .netmask
        .unwrap_or_else(|| Ipv4Addr::new(255, 255, 255, 0));
    sys::set_address(nic, lease.address, mask)
        .with_context(|| format!("network: cannot give {nic} address {}", lease.address))?;
    if let Some(mtu) = lease.mtu.filter(|m| *m >= 576) {
        if let Err(e) = sys::set_mtu(nic, mtu) {
            crate::log!("network: cannot set {nic}'s MTU to {mtu}: {e}");
        }
    }
    let Some(router) = lease.router else {
        bail!(
            "the job asked for a network and the DHCP server on {nic} gave address {} but no router",
            lease.address
        );
    };
    sys::add_default_route(nic, router)
        .with_context(|| format!("network: cannot add the default route via {router}"))?;
    if !lease.dns.is_empty() {
        if let Err(e) = write_resolv_conf(Path::new("/etc"), &lease.dns) {
            crate::log!("network: cannot write /etc/resolv.conf: {e:#}");
        }
    }
    let dns: Vec<String> = lease.dns.iter().map(Ipv4Addr::to_string).collect();
    Ok(format!(
        "{}/{} via {router}, DNS {}",
        lease.address,
        mask,
        if dns.is_empty() {
            "none".to_owned()
        } else {
            dns.join(" ")
        }
    ))
}

/// Until the kernel says the link is up: before that it drops what is sent (the device's queue
/// is attached only then, up to a second after `IFF_UP`), and every lost DISCOVER costs a
/// retry interval. Bounded; DHCP's retries cover a link that never says so.
fn wait_for_link(nic: &str, start: Instant) {
    let state = Path::new(SYS_NET).join(nic).join("operstate");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if std::fs::read_to_string(&state).is_ok_and(|s| matches!(s.trim(), "up" | "unknown")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::log!(
        "network: {nic} link up after {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}

/// DISCOVER, OFFER, REQUEST, ACK, retried until [`DEADLINE`].
fn lease(nic: &str, start: Instant) -> Result<dhcp::Lease> {
    let mac = sys::mac(nic).with_context(|| format!("network: {nic} has no MAC address"))?;
    let sock = sys::PacketSocket::open(nic)
        .with_context(|| format!("network: cannot open a packet socket on {nic}"))?;
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
        ^ std::process::id().rotate_left(16)
        ^ u32::try_from(start.elapsed().as_nanos() & 0xffff_ffff).unwrap_or(0);
    let mut wait = Duration::from_millis(250);
    let mut tries = 0u32;
    while start.elapsed() < DEADLINE {
        tries += 1;
        let discover = dhcp::message(xid, mac, dhcp::Kind::Discover, None);
        sock.send(&dhcp::frame(&discover))?;
        if let Some(offer) = receive(&sock, xid, mac, wait, dhcp::Kind::Offer)? {
            let request = dhcp::message(xid, mac, dhcp::Kind::Request, Some(&offer));
            sock.send(&dhcp::frame(&request))?;
            match receive(&sock, xid, mac, wait, dhcp::Kind::Ack)? {
                Some(ack) => return Ok(ack),
                None => crate::log!("network: no DHCP ACK on {nic}; starting over"),
            }
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
    bail!(
        "the job asked for a network and no DHCP server answered on {nic} within {} s ({tries} tries); the node's network (passt, libvirt's network) gave no address",
        DEADLINE.as_secs()
    )
}

/// The first reply of `kind` (or a NAK, as `None`) within `wait`.
fn receive(
    sock: &sys::PacketSocket,
    xid: u32,
    mac: [u8; 6],
    wait: Duration,
    kind: dhcp::Kind,
) -> Result<Option<dhcp::Lease>> {
    let until = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some(n) = sock.recv(&mut buf, left)? else {
            break;
        };
        let Some(reply) = buf
            .get(..n)
            .and_then(dhcp::unframe)
            .and_then(|p| dhcp::parse_reply(p, xid, mac))
        else {
            continue;
        };
        if reply.kind == kind {
            return Ok(Some(reply));
        }
        if reply.kind == dhcp::Kind::Nak {
            return Ok(None);
        }
    }
    Ok(None)
}

/// `nameserver` lines in `etc/resolv.conf`, written beside and renamed over the old file.
fn write_resolv_conf(etc: &Path, dns: &[Ipv4Addr]) -> Result<()> {
    std::fs::create_dir_all(etc)?;
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    let tmp = etc.join(".resolv.conf.capsule-init");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, etc.join("resolv.conf"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_ethernet_interface_is_chosen_and_lo_never() {
        let d = tempfile::tempdir().unwrap();
        for (name, kind) in [("lo", "772"), ("eth1", "1"), ("eth0", "1"), ("sit0", "776")] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("type"), format!("{kind}\n")).unwrap();
        }
        assert_eq!(first_ethernet(d.path()).as_deref(), Some("eth0"));
        let none = tempfile::tempdir().unwrap();
        assert_eq!(first_ethernet(none.path()), None);
    }

    #[test]
    fn a_running_network_manager_is_seen() {
        let d = tempfile::tempdir().unwrap();
        assert!(!manager_present(d.path()));
        // What systemd's tmpfiles makes without networkd running is not a manager.
        std::fs::create_dir_all(d.path().join("run/systemd/netif/links")).unwrap();
        assert!(!manager_present(d.path()));
        std::fs::write(
            d.path().join("run/systemd/netif/state"),
            "OPER_STATE=routable\n",
        )
        .unwrap();
        assert!(manager_present(d.path()));
    }

    #[test]
    fn resolv_conf_lists_the_servers() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        write_resolv_conf(
            &etc,
            &[Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
    }
}
