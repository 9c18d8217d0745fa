//! The kernel calls that configure an interface (the classic `SIOC*` ioctls, which need no
//! netlink code) and a packet socket for DHCP.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::libc;

/// An `AF_INET` datagram socket, the handle the interface ioctls go through.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    Ok(req)
}

/// `ioctl(sock, request, req)`.
fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a valid, initialised ifreq that lives across the call, which is what
    // every SIOC*IF* request used here reads or writes.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(req)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux, and any bit
    // pattern is a valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Set `IFF_UP` on `name`.
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)
}

/// `name`'s IPv4 address, `None` when it has none.
pub fn address(name: &str) -> io::Result<Option<Ipv4Addr>> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    match ioctl(&sock, libc::SIOCGIFADDR, &mut req) {
        Ok(()) => {
            // SAFETY: SIOCGIFADDR filled the address member with a sockaddr_in.
            let sa = unsafe { req.ifr_ifru.ifru_addr };
            let d = sa.sa_data;
            let octets = [d[2], d[3], d[4], d[5]].map(|c| c.to_ne_bytes()[0]);
            Ok(Some(Ipv4Addr::from(octets)))
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Give `name` address `a` with netmask `mask`.
pub fn set_address(name: &str, a: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(a);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req)
}

/// Set `name`'s MTU.
pub fn set_mtu(name: &str, mtu: u16) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ioctl(&sock, libc::SIOCSIFMTU, &mut req)
}

/// The kernel's `struct rtentry` (`<net/route.h>`; the libc crate has it only for musl).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn add_route(nic: &str, dst: Ipv4Addr, mask: Ipv4Addr, gw: Option<Ipv4Addr>) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut dev: Vec<libc::c_char> = nic
        .bytes()
        .chain([0])
        .map(|b| libc::c_char::from_ne_bytes([b]))
        .collect();
    let flags = libc::RTF_UP
        | if gw.is_some() {
            libc::RTF_GATEWAY
        } else {
            libc::RTF_HOST
        };
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(dst),
        rt_gateway: sockaddr_in(gw.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_in(mask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `rt` is a complete rtentry as the kernel lays it out, and `dev` (a
    // NUL-terminated name it points to) outlives the call.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT,
            std::ptr::from_mut(&mut rt),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The default route via `gw` on `nic`; a gateway outside the interface's subnet (as `passt`
/// may give, copying the node's addresses) first gets a host route on the link.
pub fn add_default_route(nic: &str, gw: Ipv4Addr) -> io::Result<()> {
    let any = Ipv4Addr::UNSPECIFIED;
    match add_route(nic, any, any, Some(gw)) {
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => {
            add_route(nic, gw, Ipv4Addr::BROADCAST, None)?;
            add_route(nic, any, any, Some(gw))
        }
        other => other,
    }
}

/// The gateway of the IPv4 default route, from `/proc/net/route`.
pub fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"00000000") || f.get(7) != Some(&"00000000") {
            return None;
        }
        let gw = u32::from_str_radix(f.get(2)?, 16).ok()?;
        Some(Ipv4Addr::from(gw.to_ne_bytes()))
    })
}

/// `nic`'s MAC address.
pub fn mac(nic: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{nic}/address"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad MAC {:?}", text.trim()),
        )
    })
}

/// A packet socket on one interface carrying IPv4 packets (the link header is the kernel's).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
}

impl PacketSocket {
    /// Open one on `nic`.
    pub fn open(nic: &str) -> io::Result<PacketSocket> {
        let ifindex: libc::c_int =
            std::fs::read_to_string(format!("/sys/class/net/{nic}/ifindex"))?
                .trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad ifindex"))?;
        let proto = u16::try_from(libc::ETH_P_IP).unwrap_or(0x0800).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = PacketSocket { fd, ifindex };
        let addr = sock.link_addr(proto, [0; 8]);
        // SAFETY: `addr` is a sockaddr_ll and the length passed is its size.
        let r = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn link_addr(&self, proto: u16, to: [u8; 8]) -> libc::sockaddr_ll {
        libc::sockaddr_ll {
            sll_family: libc::c_ushort::try_from(libc::AF_PACKET).unwrap_or_default(),
            sll_protocol: proto,
            sll_ifindex: self.ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: to,
        }
    }

    /// Send an IPv4 packet to the link's broadcast address.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let proto = u16::try_from(libc::ETH_P_IP).unwrap_or(0x0800).to_be();
        let to = self.link_addr(proto, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        // SAFETY: `packet` is valid for its length, `to` is a sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One packet into `buf` within `wait`; `None` when none came.
    pub fn recv(&self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Some(0))
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    Ok(Some(0))
                } else {
                    Err(e)
                }
            }
        }
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}
