//! Ethernet / VLAN / IPv4 / IPv6 / TCP header parsing.
//!
//! Each step checks the bytes it reads against the end of the frame and the
//! lengths the headers claim; anything inconsistent is `Malformed`.

use inspector_common::flow::FlowKey;

use crate::{csum, packet::Packet};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

/// VLAN tags we look through (802.1Q and 802.1ad, QinQ).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we skip before giving up on a packet.
const MAX_IPV6_EXT: usize = 6;

/// Outcome of header parsing.
pub enum Parsed {
    /// A TCP segment with a complete header, written to the `Tcp` passed in.
    Tcp,
    /// An IPv4 or IPv6 fragment of a TCP datagram: it cannot be inspected
    /// alone. The ports are known for a first fragment that holds them:
    /// [`Ports`].
    Fragment(Ports),
    /// A TCP segment larger than an IP length field can describe (BIG
    /// TCP: the length field is 0 and the packet is over 64 KiB): more
    /// than the inspector parses. (Also an IPv6 one whose length field is
    /// 0 before a hop-by-hop header, whatever its size: see `parse_ipv6`.) Its addresses and ports are written to
    /// the `Tcp` passed in; the ports are also in the [`Ports`].
    Oversized(Ports),
    /// Not TCP over IP: nothing for us.
    Other,
    /// An IPv6 packet whose extension headers go on past the ones we
    /// follow: what it carries cannot be told, and a receiver follows any
    /// number of them (see `parse_ipv6`).
    Unfollowed,
    /// Headers truncated or inconsistent.
    Malformed,
}

/// The parts of a TCP segment the inspector uses. The addresses come
/// first and 8-aligned, so that an IPv4 address is written as two words
/// ([`set_v4_mapped`]).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Tcp {
    /// Source and destination addresses; IPv4 as IPv4-mapped IPv6.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub is_v6: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub flags: u8,
    /// Offset of the TCP header from the start of the frame.
    pub l4_off: usize,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the first payload byte from the start of the frame.
    pub payload_off: usize,
    /// Payload length according to the IP header (frame padding excluded).
    pub payload_len: usize,
    /// TCP header and payload length (for the pseudo-header).
    pub tcp_len: usize,
}

impl Tcp {
    /// The segment's pseudo-header sum (see [`csum::pseudo`]).
    #[inline(always)]
    pub fn pseudo_sum(&self) -> u16 {
        csum::pseudo(&self.src, &self.dst, self.is_v6, self.tcp_len)
    }

    /// Writes the segment's flow key into `key` (built in place: the BPF
    /// stack is small): the client is the source if `from_client`, else
    /// the destination.
    #[inline(always)]
    pub fn flow_key(&self, from_client: bool, key: &mut FlowKey) {
        if from_client {
            (key.client, key.server) = (self.src, self.dst);
            (key.client_port, key.server_port) = (self.src_port, self.dst_port);
        } else {
            (key.client, key.server) = (self.dst, self.src);
            (key.client_port, key.server_port) = (self.dst_port, self.src_port);
        }
    }
}

/// The ports of a TCP header in one word: [`Ports::KNOWN`] and
/// `src << 16 | dst`, or 0 if they are not known. One plain word rather
/// than an `Option` of a pair: LLVM leaves the pair of a `None` undefined
/// and may still move it from register to register, and the verifier
/// refuses a read of a register that was never written.
#[derive(Clone, Copy)]
pub struct Ports(pub u64);

impl Ports {
    pub const KNOWN: u64 = 1 << 32;
    pub const UNKNOWN: Ports = Ports(0);

    #[inline(always)]
    pub fn get(self) -> Option<(u16, u16)> {
        if self.0 & Self::KNOWN == 0 {
            return None;
        }
        Some(((self.0 >> 16) as u16, self.0 as u16))
    }
}

/// Source and destination port of a TCP header at `off`, if present.
#[inline(always)]
fn ports_at<P: Packet>(ctx: &P, off: usize) -> Ports {
    match ctx.read::<[u8; 4]>(off) {
        Some(p) => Ports(Ports::KNOWN | u32::from_be_bytes(p) as u64),
        None => Ports::UNKNOWN,
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses from the Ethernet header to the start of the TCP payload.
#[inline(always)]
pub fn parse<P: Packet>(ctx: &P, out: &mut Tcp) -> Parsed {
    // Destination and source MAC, then the first EtherType.
    let Some(mut proto) = ctx.read::<[u8; 2]>(12).map(be16) else {
        return Parsed::Malformed;
    };
    let mut off = 14usize;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // TCI (2 bytes) then the inner EtherType.
        let Some(inner) = ctx.read::<[u8; 2]>(off + 2).map(be16) else {
            return Parsed::Malformed;
        };
        proto = inner;
        off += 4;
    }
    match proto {
        ETH_P_IP => parse_ipv4(ctx, off, out),
        ETH_P_IPV6 => parse_ipv6(ctx, off, out),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(ctx: &P, off: usize, out: &mut Tcp) -> Parsed {
    let Some(h) = ctx.at::<[u8; 20]>(off) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16([h[2], h[3]]) as usize;
    // A length of 0 is BIG TCP's (see `oversized`), checked below.
    if ihl < 20 || total < ihl && total != 0 {
        return Parsed::Malformed;
    }
    // More-fragments flag or a non-zero fragment offset.
    let frag = be16([h[6], h[7]]);
    if frag & 0x3fff != 0 {
        let first_tcp = frag & 0x1fff == 0 && h[9] == IPPROTO_TCP;
        return Parsed::Fragment(if first_tcp {
            ports_at(ctx, off + ihl)
        } else {
            Ports::UNKNOWN
        });
    }
    if h[9] != IPPROTO_TCP {
        return Parsed::Other;
    }
    set_v4_mapped(&mut out.src, [h[12], h[13], h[14], h[15]]);
    set_v4_mapped(&mut out.dst, [h[16], h[17], h[18], h[19]]);
    out.is_v6 = false;
    out.l3_off = off;
    if total == 0 {
        return oversized(
            ctx,
            off + ihl,
            ctx.total_len().saturating_sub(off + ihl),
            out,
        );
    }
    parse_tcp(ctx, off + ihl, total - ihl, out)
}

/// A TCP segment whose IP header gives length 0 (IPv4 total length, IPv6
/// payload length), `len` bytes from `off` to the end of the packet: BIG
/// TCP writes 0 there for a GSO/GRO packet over 64 KiB, whose real length
/// is the packet's. Over 64 KiB it is [`Parsed::Oversized`], with its ports
/// in `out`; anything shorter has no business with length 0: malformed.
#[inline(always)]
fn oversized<P: Packet>(ctx: &P, off: usize, len: usize, out: &mut Tcp) -> Parsed {
    if len <= 65535 {
        return Parsed::Malformed;
    }
    too_large(ctx, off, out)
}

/// [`Parsed::Oversized`] for the TCP segment at `off`, whatever its length.
#[inline(always)]
fn too_large<P: Packet>(ctx: &P, off: usize, out: &mut Tcp) -> Parsed {
    // Ports and sequence number, for the event that reports it.
    let Some(h) = ctx.at::<[u8; 8]>(off) else {
        return Parsed::Malformed;
    };
    out.src_port = be16([h[0], h[1]]);
    out.dst_port = be16([h[2], h[3]]);
    out.seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    Parsed::Oversized(ports_at(ctx, off))
}

/// Writes `::ffff:a.b.c.d`, the IPv4-mapped IPv6 address of `a.b.c.d`,
/// into an address field of [`Tcp`] as two 64-bit words. (Assigning a
/// 16-byte array there was two calls of the BPF `memmove`, a byte per
/// iteration, on every IPv4 packet.)
#[inline(always)]
fn set_v4_mapped(field: &mut [u8; 16], v4: [u8; 4]) {
    const {
        assert!(core::mem::offset_of!(Tcp, src).is_multiple_of(8));
        assert!(core::mem::offset_of!(Tcp, dst).is_multiple_of(8));
    };
    // Bytes 8..16 in memory order: 0, 0, 0xff, 0xff, then the address.
    let low = u64::from_le_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]);
    let p = field.as_mut_ptr() as *mut u64;
    // SAFETY: `field` is `Tcp::src` or `Tcp::dst`, 16 bytes at an 8-aligned
    // offset of an 8-aligned struct (checked above).
    unsafe {
        p.write(0);
        p.add(1).write(low);
    }
}

#[inline(always)]
fn parse_ipv6<P: Packet>(ctx: &P, off: usize, out: &mut Tcp) -> Parsed {
    let Some(h) = ctx.at::<[u8; 8]>(off) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let (Some(src), Some(dst)) = (ctx.at::<[u8; 16]>(off + 8), ctx.at::<[u8; 16]>(off + 24)) else {
        return Parsed::Malformed;
    };
    out.src = *src;
    out.dst = *dst;
    out.is_v6 = true;
    out.l3_off = off;
    let mut remaining = be16([h[4], h[5]]) as usize;
    let mut next = h[6];
    let mut off = off + 40;
    if remaining == 0 && next == IPPROTO_TCP {
        // BIG TCP (see `oversized`): the real length is the packet's.
        return oversized(ctx, off, ctx.total_len().saturating_sub(off), out);
    }
    if remaining == 0 && next == 0 {
        // Length 0 before a hop-by-hop header: Linux keeps the packet as
        // long as it came (or as a jumbo option says), forwards it, and the
        // server's stack reads the TCP segment in it. No honest stack sends
        // one under 64 KiB, and over it is more than is parsed: to an
        // inspected port it is dropped as too large, never passed unread.
        let Some(e) = ctx.read::<[u8; 2]>(off) else {
            return Parsed::Malformed;
        };
        return match e[0] {
            IPPROTO_TCP => too_large(ctx, off + (e[1] as usize + 1) * 8, out),
            0 | 43 | 44 | 51 | 60 => Parsed::Unfollowed,
            _ => Parsed::Other,
        };
    }
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_TCP => return parse_tcp(ctx, off, remaining, out),
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some(e) = ctx.read::<[u8; 2]>(off) else {
                    return Parsed::Malformed;
                };
                next = e[0];
                (e[1] as usize + 1) * 8
            }
            // Fragment header: next header, reserved, offset and flags.
            44 => {
                let Some(e) = ctx.read::<[u8; 4]>(off) else {
                    return Parsed::Malformed;
                };
                let first = be16([e[2], e[3]]) >> 3 == 0;
                let ports = if first && e[0] == IPPROTO_TCP {
                    ports_at(ctx, off + 8)
                } else {
                    Ports::UNKNOWN
                };
                return Parsed::Fragment(ports);
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let Some(e) = ctx.read::<[u8; 2]>(off) else {
                    return Parsed::Malformed;
                };
                next = e[0];
                (e[1] as usize + 2) * 4
            }
            _ => return Parsed::Other,
        };
        if len > remaining {
            return Parsed::Malformed;
        }
        remaining -= len;
        off += len;
    }
    if next == IPPROTO_TCP {
        return parse_tcp(ctx, off, remaining, out);
    }
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        // Still extension headers (or a fragment header behind them): Linux
        // follows any number of them and would deliver a TCP segment at
        // the end, to an inspected port for all we know. No honest stack
        // sends this many (RFC 8200 4.1: each at most once, destination
        // options twice).
        return Parsed::Unfollowed;
    }
    Parsed::Other
}

/// `ip_payload` is the length of the IP payload (TCP header and data) as the
/// IP header states it.
#[inline(always)]
fn parse_tcp<P: Packet>(ctx: &P, off: usize, ip_payload: usize, out: &mut Tcp) -> Parsed {
    let Some(h) = ctx.at::<[u8; 20]>(off) else {
        return Parsed::Malformed;
    };
    let doff = ((h[12] >> 4) as usize) * 4;
    if doff < 20 || doff > ip_payload {
        return Parsed::Malformed;
    }
    let payload_off = off + doff;
    let payload_len = ip_payload - doff;
    // The IP header must not claim more bytes than the frame holds.
    if payload_off + payload_len > ctx.total_len() {
        return Parsed::Malformed;
    }
    out.src_port = be16([h[0], h[1]]);
    out.dst_port = be16([h[2], h[3]]);
    out.seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    out.ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    out.flags = h[13];
    out.l4_off = off;
    out.payload_off = payload_off;
    out.payload_len = payload_len;
    out.tcp_len = ip_payload;
    Parsed::Tcp
}
