//! The DHCPv4 messages the agent needs (RFC 2131/2132): DISCOVER and REQUEST out, OFFER, ACK
//! and NAK in, framed in IPv4 and UDP for a packet socket (the interface has no address yet,
//! so the kernel's UDP cannot receive a reply sent to the address being offered).
//!
//! Written by hand rather than with a DHCP crate: four message types and six options are
//! about 200 lines, and the agent stays small. Everything received comes from the network
//! the host offers and is parsed with bounds: a short or malformed packet is ignored.

use std::net::Ipv4Addr;

/// `op` of a request.
const BOOTREQUEST: u8 = 1;
/// `op` of a reply.
const BOOTREPLY: u8 = 2;
/// The magic cookie that starts the options.
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header before the cookie.
const HEADER: usize = 236;
/// Client and server UDP ports.
pub const CLIENT_PORT: u16 = 68;
/// The server's UDP port.
pub const SERVER_PORT: u16 = 67;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Client looks for servers.
    Discover = 1,
    /// Server offers an address.
    Offer = 2,
    /// Client asks for the offered address.
    Request = 3,
    /// Server confirms.
    Ack = 5,
    /// Server refuses.
    Nak = 6,
}

/// What a server's OFFER or ACK says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The message type.
    pub kind: Kind,
    /// The address for us (`yiaddr`).
    pub address: Ipv4Addr,
    /// Option 54: the server, to name in the REQUEST.
    pub server: Option<Ipv4Addr>,
    /// Option 1.
    pub netmask: Option<Ipv4Addr>,
    /// Option 3, the first router.
    pub router: Option<Ipv4Addr>,
    /// Option 6, at most three.
    pub dns: Vec<Ipv4Addr>,
    /// Option 26.
    pub mtu: Option<u16>,
}

/// A DISCOVER (`requested`: none) or a REQUEST for `requested` from `server`, as the UDP
/// payload.
pub fn message(xid: u32, mac: [u8; 6], kind: Kind, offer: Option<&Lease>) -> Vec<u8> {
    let mut m = vec![0u8; HEADER];
    m[0] = BOOTREQUEST;
    m[1] = 1; // Ethernet
    m[2] = 6; // hardware address length
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    // Broadcast flag: the reply must reach a client that has no address yet.
    m[10] = 0x80;
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&COOKIE);
    m.extend_from_slice(&[53, 1, kind as u8]);
    if let Some(offer) = offer {
        m.push(50);
        m.push(4);
        m.extend_from_slice(&offer.address.octets());
        if let Some(server) = offer.server {
            m.push(54);
            m.push(4);
            m.extend_from_slice(&server.octets());
        }
    }
    // Parameters wanted: netmask, router, DNS, MTU.
    m.extend_from_slice(&[55, 4, 1, 3, 6, 26]);
    m.push(255);
    // Some servers ignore BOOTP messages shorter than 300 bytes.
    if m.len() < 300 {
        m.resize(300, 0);
    }
    m
}

/// The reply to our `xid` for `mac` in a UDP payload, or `None` when it is not one.
pub fn parse_reply(payload: &[u8], xid: u32, mac: [u8; 6]) -> Option<Lease> {
    let header = payload.get(..HEADER)?;
    if header.first() != Some(&BOOTREPLY)
        || header.get(4..8)? != xid.to_be_bytes()
        || header.get(28..34)? != mac
        || payload.get(HEADER..HEADER + 4)? != COOKIE
    {
        return None;
    }
    let address = ipv4(header.get(16..20)?)?;
    let mut lease = Lease {
        kind: Kind::Nak,
        address,
        server: None,
        netmask: None,
        router: None,
        dns: Vec::new(),
        mtu: None,
    };
    let mut kind = None;
    let mut options = payload.get(HEADER + 4..)?;
    while let Some((&code, rest)) = options.split_first() {
        match code {
            0 => {
                options = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..usize::from(len))?;
        options = rest.get(usize::from(len)..)?;
        match code {
            53 => {
                kind = match value {
                    [2] => Some(Kind::Offer),
                    [5] => Some(Kind::Ack),
                    [6] => Some(Kind::Nak),
                    _ => None,
                }
            }
            54 => lease.server = ipv4(value),
            1 => lease.netmask = ipv4(value),
            3 => lease.router = value.get(..4).and_then(ipv4),
            6 => {
                lease.dns = value.chunks_exact(4).filter_map(ipv4).take(3).collect();
            }
            26 => {
                lease.mtu = match value {
                    [a, b] => Some(u16::from_be_bytes([*a, *b])),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    lease.kind = kind?;
    Some(lease)
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// `payload` in UDP (checksum 0: optional in IPv4) in IPv4 from 0.0.0.0:68 to the limited
/// broadcast address :67, for a packet socket.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(payload.len() + 8).unwrap_or(u16::MAX);
    let total = udp_len.saturating_add(20);
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(&[255, 255, 255, 255]);
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    p.extend_from_slice(&SERVER_PORT.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The UDP payload of an IPv4 packet for our client port, or `None`.
pub fn unframe(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 || packet.get(9) != Some(&17) {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let udp = packet.get(ihl..)?;
    let dst = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if dst != CLIENT_PORT || len < 8 {
        return None;
    }
    udp.get(8..len)
}

/// The IPv4 header checksum (one's complement sum of 16-bit words).
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A server's reply to `xid` with these options.
    fn reply(xid: u32, yiaddr: [u8; 4], options: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER];
        m[0] = BOOTREPLY;
        m[4..8].copy_from_slice(&xid.to_be_bytes());
        m[16..20].copy_from_slice(&yiaddr);
        m[28..34].copy_from_slice(&MAC);
        m.extend_from_slice(&COOKIE);
        m.extend_from_slice(options);
        m
    }

    #[test]
    fn an_offer_is_read_with_its_options() {
        let opts = [
            53, 1, 2, 54, 4, 10, 0, 2, 2, 1, 4, 255, 255, 255, 0, 3, 8, 10, 0, 2, 2, 9, 9, 9, 9, 6,
            16, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 26, 2, 0xff, 0xf0, 0, 255,
        ];
        let l = parse_reply(&reply(7, [10, 0, 2, 15], &opts), 7, MAC).unwrap();
        assert_eq!(l.kind, Kind::Offer);
        assert_eq!(l.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns.len(), 3);
        assert_eq!(l.mtu, Some(65520));
        // The REQUEST names the offer and its server.
        let req = message(7, MAC, Kind::Request, Some(&l));
        let opts = &req[HEADER + 4..];
        assert!(opts.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]));
        assert!(opts.windows(6).any(|w| w == [54, 4, 10, 0, 2, 2]));
        assert!(req.len() >= 300 && req[10] == 0x80);
    }

    #[test]
    fn others_replies_and_broken_packets_are_ignored() {
        let ok = reply(7, [10, 0, 2, 15], &[53, 1, 5, 255]);
        assert_eq!(parse_reply(&ok, 7, MAC).unwrap().kind, Kind::Ack);
        assert!(parse_reply(&ok, 8, MAC).is_none(), "another xid");
        assert!(parse_reply(&ok, 7, [0; 6]).is_none(), "another client");
        for cut in 0..ok.len() - 1 {
            // Any truncation: no panic, and no type means no lease.
            let _ = parse_reply(&ok[..cut], 7, MAC);
        }
        // An option whose length runs past the end.
        assert!(parse_reply(&reply(7, [1; 4], &[53, 1, 2, 6, 200, 1]), 7, MAC).is_none());
        // No message type.
        assert!(parse_reply(&reply(7, [1; 4], &[1, 4, 255, 0, 0, 0, 255]), 7, MAC).is_none());
    }

    #[test]
    fn framing_round_trips_and_the_checksum_verifies() {
        let payload = message(1, MAC, Kind::Discover, None);
        let packet = frame(&payload);
        assert_eq!(checksum(&packet[..20]), 0, "a valid header sums to 0");
        // What a server would send back, as our socket sees it.
        let mut back = packet.clone();
        back[20..22].copy_from_slice(&SERVER_PORT.to_be_bytes());
        back[22..24].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        assert_eq!(unframe(&back).unwrap(), &payload[..]);
        assert!(unframe(&packet).is_none(), "to the server's port");
        assert!(unframe(&back[..25]).is_none());
        assert!(unframe(&[]).is_none());
    }
}
