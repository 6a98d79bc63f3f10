//! The reassembly fallback's daemon side (docs/contract.md §5; the kernel
//! side and the protocol between the two are in
//! `inspector_common::fallback`).
//!
//! `inspector attach` owns a tap device. The kernel redirects a client
//! segment that starts beyond the next expected byte to the tap instead of
//! dropping it; this module reads it, holds it per flow, and writes it back
//! into the tap once the flow's next expected byte (told by the kernel's
//! wake ring, or read from the flow table) has reached it. A frame written
//! into the tap enters the kernel as if received on the tap: the inspector,
//! attached to the tap's ingress in the same mode, parses and masks it in
//! order from the flow's state, and the kernel then forwards it (or
//! delivers it locally) as any received packet. The daemon never decides
//! what passes: it only reorders, and everything it writes is inspected.
//!
//! Fail-closed by construction: the tap disappears with the process that
//! holds its file descriptor, and the kernel diverts only while the
//! daemon's heartbeat is fresh; otherwise out-of-order segments are dropped
//! as without a fallback. Held segments are bounded per flow and in total
//! and time out; past a limit a segment is dropped (`fallback_drops`) and
//! the sender retransmits it.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf};
use inspector_common::{
    counters::{Counter, COUNTERS_MAP},
    events::{kind, Event},
    fallback::{DropReason, Fallback, Wake, DROP_REASONS, FALLBACK_MAP, WAKE_MAP},
    flow::{seq_diff, Flow, FlowKey, FLOWS_MAP},
    ports::{port_slot, PORTS_MAP},
    verbs::OTHER,
};
use log::{info, warn};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{flows::monotonic_ns, journal::RateLimit, pin::open_map};

/// How much the fallback may hold, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub flow_bytes: u64,
    pub total_bytes: u64,
    pub hold: Duration,
}

/// How often the heartbeat is written and held segments are looked at.
/// Also the longest a held segment waits when its wake was lost (a full
/// ring, or the race `segment::try_divert` describes in the kernel).
const TICK: Duration = Duration::from_millis(25);

/// Largest frame read from the tap: a 64 KiB IP packet and its Ethernet
/// header with two VLAN tags.
const FRAME_MAX: usize = 65536 + 22;

/// Name pattern of the tap (the kernel picks the number).
const TAP_NAME: &str = "inspfb%d";

/// The daemon's tap device: gone when its file descriptor closes.
pub struct Tap {
    fd: OwnedFd,
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// `ifreq` for the interface `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

/// An interface ioctl on socket `sock` (rustix has no wrappers for these).
fn if_ioctl(sock: &OwnedFd, req: libc::Ioctl, r: &mut libc::ifreq, what: &str) -> Result<()> {
    // SAFETY: every request used here reads or writes one `ifreq`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, r as *mut libc::ifreq) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| what.to_string());
    }
    Ok(())
}

impl Tap {
    /// Creates a tap (no offloads, no packet-information header), raises
    /// its MTU so that any frame the inspected interfaces carry fits, and
    /// brings it up. Its IPv4 reverse-path filter is made loose: the
    /// client addresses of the frames written into it are routed through
    /// another interface.
    pub fn create() -> Result<Tap> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            "/dev/net/tun",
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context("opening /dev/net/tun for the reassembly fallback's tap")?;
        let mut r = ifreq(TAP_NAME);
        r.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        if_ioctl(&fd, libc::TUNSETIFF, &mut r, "creating the fallback tap")?;
        let name: String = r
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect();
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            None,
        )
        .context("opening a socket to configure the tap")?;
        let ifindex = rustix::net::netdevice::name_to_index(&sock, &name)
            .with_context(|| format!("looking up tap {name}"))?;
        let mut r = ifreq(&name);
        // The largest a tap takes (65535 less its Ethernet header): a
        // redirected frame longer than MTU + header would be dropped.
        r.ifr_ifru.ifru_mtu = 65521;
        if_ioctl(&sock, libc::SIOCSIFMTU, &mut r, "setting the tap's MTU")?;
        let mut r = ifreq(&name);
        if_ioctl(&sock, libc::SIOCGIFHWADDR, &mut r, "reading the tap's MAC")?;
        // SAFETY: SIOCGIFHWADDR filled the hardware-address member.
        let sa = unsafe { r.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *m = *b as u8;
        }
        loosen_rp_filter(&sock, &name)?;
        let mut r = ifreq(&name);
        if_ioctl(&sock, libc::SIOCGIFFLAGS, &mut r, "reading the tap's flags")?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        if_ioctl(&sock, libc::SIOCSIFFLAGS, &mut r, "bringing the tap up")?;
        Ok(Tap {
            fd,
            name,
            ifindex,
            mac,
        })
    }
}

/// The address the tap gets: IPv4's reverse-path filter refuses every
/// packet that comes in on a device without an address unless the filter
/// is off, and a link-local /32 is the least an address can claim.
const TAP_V4: [u8; 4] = [169, 254, 25, 1];

/// Makes the IPv4 reverse-path filter let the frames written into the tap
/// through: their client addresses are routed through another interface.
/// The tap's own setting goes to 0; the effective one is the larger of it
/// and `all`'s, and loose mode (2) needs the device to have an address,
/// hence [`TAP_V4`]. Strict mode in `all` cannot be undone per device:
/// that is said, and IPv4 segments written back are then dropped (and
/// retransmitted by their sender) as without a fallback.
fn loosen_rp_filter(sock: &OwnedFd, name: &str) -> Result<()> {
    let rp = format!("/proc/sys/net/ipv4/conf/{name}/rp_filter");
    if let Err(e) = std::fs::write(&rp, "0") {
        warn!("could not write {rp} ({e})");
    }
    let mut r = ifreq(name);
    // SAFETY: `sockaddr_in` fits in the address member of `ifreq`; plain data.
    unsafe {
        let sin = &mut r.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
        (*sin).sin_addr.s_addr = u32::from_ne_bytes(TAP_V4);
    }
    if_ioctl(
        sock,
        libc::SIOCSIFADDR,
        &mut r,
        "giving the tap its address",
    )?;
    let mut r = ifreq(name);
    // SAFETY: as above.
    unsafe {
        let sin = &mut r.ifr_ifru.ifru_netmask as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
        (*sin).sin_addr.s_addr = u32::MAX;
    }
    if_ioctl(
        sock,
        libc::SIOCSIFNETMASK,
        &mut r,
        "setting the tap's netmask",
    )?;
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
    if all.trim() == "1" {
        warn!(
            "net.ipv4.conf.all.rp_filter is 1 (strict): IPv4 segments the reassembly fallback \
             writes back are dropped; set it to 0 or 2 (the per-interface values still apply)"
        );
    }
    Ok(())
}

/// One direction of a flow: what the daemon holds segments of, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Half {
    pub flow: FlowKey,
    /// The server's direction (replies), not the client's (commands).
    pub server: bool,
}

/// What the daemon found in a frame the kernel diverted.
#[derive(Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its flow and direction (see [`Segment::from_server`]).
    pub key: Half,
    pub seq: u32,
    pub end: u32,
    /// The frame to write back: Ethernet header for the tap, then the IP
    /// packet (VLAN tags and Ethernet padding removed).
    pub frame: Vec<u8>,
    /// Frame offsets of the TCP header and of the TSval of its timestamp
    /// option (0: none), and the TCP length (header and payload).
    pub tcp_at: usize,
    pub ts_at: usize,
    pub tcp_len: usize,
    /// The pseudo-header sum, unfolded.
    pub pseudo: u32,
}

impl Segment {
    /// Makes it a segment of the server's direction: the frame goes from
    /// the server to the client, so its flow key is the other way round.
    /// [`parse`] cannot tell (it does not know the inspected ports); the
    /// kernel decides as the daemon must: a segment to an inspected port is
    /// the client's.
    pub fn from_server(&mut self) {
        let f = self.key.flow;
        self.key = Half {
            flow: FlowKey {
                client: f.server,
                server: f.client,
                client_port: f.server_port,
                server_port: f.client_port,
            },
            server: true,
        };
    }

    /// The TSval of its timestamp option, if it has one.
    pub fn tsval(&self) -> Option<u32> {
        (self.ts_at != 0)
            .then(|| be32(&self.frame, self.ts_at))
            .flatten()
    }

    /// Replaces its TSval with `ts` and recomputes the TCP checksum, if
    /// that checksum was right (a wrong one stays wrong).
    pub fn restamp(&mut self, ts: u32) {
        let tcp = self.tcp_at..self.tcp_at + self.tcp_len;
        if self.ts_at == 0 || !fold(sum16(&self.frame[tcp.clone()], self.pseudo)) != 0 {
            return;
        }
        self.frame[self.ts_at..self.ts_at + 4].copy_from_slice(&ts.to_be_bytes());
        self.frame[self.tcp_at + 16..self.tcp_at + 18].copy_from_slice(&[0, 0]);
        let check = !fold(sum16(&self.frame[tcp], self.pseudo));
        self.frame[self.tcp_at + 16..self.tcp_at + 18].copy_from_slice(&check.to_be_bytes());
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Ones'-complement sum of `b` as big-endian words (odd tail padded).
fn sum16(b: &[u8], mut acc: u32) -> u32 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add((*last as u32) << 8);
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Parses a diverted frame: Ethernet (up to two VLAN tags), IPv4 or IPv6
/// (hop-by-hop, routing and destination options headers), TCP. The frame to
/// write back gets `tap_mac` as its destination (the tap's stack accepts
/// only frames for it), and a TCP checksum that holds only the
/// pseudo-header sum (left for an offload to complete, which a raw frame
/// cannot be) is completed; any other checksum is left as it is, so a
/// corrupted segment stays corrupted and its receiver drops it.
pub fn parse(frame: &[u8], tap_mac: [u8; 6]) -> Option<Segment> {
    let mut off = 12;
    let mut proto = be16(frame, off)?;
    off += 2;
    for _ in 0..2 {
        if proto == 0x8100 || proto == 0x88a8 {
            proto = be16(frame, off + 2)?;
            off += 4;
        }
    }
    let l3 = off;
    let (src, dst, mut next, l4, ip_end) = match proto {
        0x0800 => {
            let v = *frame.get(l3)?;
            let ihl = (v & 0xf) as usize * 4;
            if v >> 4 != 4 || ihl < 20 {
                return None;
            }
            let total = be16(frame, l3 + 2)? as usize;
            let frag = be16(frame, l3 + 6)?;
            if frag & 0x3fff != 0 {
                return None;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[10] = 0xff;
            src[11] = 0xff;
            dst[10] = 0xff;
            dst[11] = 0xff;
            src[12..].copy_from_slice(frame.get(l3 + 12..l3 + 16)?);
            dst[12..].copy_from_slice(frame.get(l3 + 16..l3 + 20)?);
            (src, dst, *frame.get(l3 + 9)?, l3 + ihl, l3 + total)
        }
        0x86dd => {
            let plen = be16(frame, l3 + 4)? as usize;
            let src: [u8; 16] = frame.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            let dst: [u8; 16] = frame.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            (src, dst, *frame.get(l3 + 6)?, l3 + 40, l3 + 40 + plen)
        }
        _ => return None,
    };
    let mut l4 = l4;
    let is_v6 = proto == 0x86dd;
    let mut ext = 0;
    while is_v6 && matches!(next, 0 | 43 | 60) && ext < 4 {
        next = *frame.get(l4)?;
        l4 += (*frame.get(l4 + 1)? as usize + 1) * 8;
        ext += 1;
    }
    if next != 6 || ip_end > frame.len() || l4 + 20 > ip_end {
        return None;
    }
    let doff = (*frame.get(l4 + 12)? >> 4) as usize * 4;
    if doff < 20 || l4 + doff > ip_end {
        return None;
    }
    let seq = be32(frame, l4 + 4)?;
    let len = (ip_end - l4 - doff) as u32;
    let key = Half {
        flow: FlowKey {
            client: src,
            server: dst,
            client_port: be16(frame, l4)?,
            server_port: be16(frame, l4 + 2)?,
        },
        server: false,
    };
    let mut out = Vec::with_capacity(14 + ip_end - l3);
    out.extend_from_slice(&tap_mac);
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&proto.to_be_bytes());
    out.extend_from_slice(&frame[l3..ip_end]);
    let tcp_at = 14 + (l4 - l3);
    let tcp_len = ip_end - l4;
    let start = if is_v6 { 0 } else { 12 };
    let mut pseudo = sum16(&src[start..], 0);
    pseudo = sum16(&dst[start..], pseudo);
    pseudo = pseudo.wrapping_add(6 + tcp_len as u32);
    let field = u16::from_be_bytes([out[tcp_at + 16], out[tcp_at + 17]]);
    if field == fold(pseudo) {
        out[tcp_at + 16] = 0;
        out[tcp_at + 17] = 0;
        let full = !fold(sum16(&out[tcp_at..], pseudo));
        // A complete checksum equal to the pseudo-header sum is rare and
        // then correct already (the sum over the segment checks out).
        let check = if !fold(sum16(&frame[l4..ip_end], pseudo)) == 0 {
            field
        } else {
            full
        };
        out[tcp_at + 16..tcp_at + 18].copy_from_slice(&check.to_be_bytes());
    }
    // The timestamp option (kind 8, length 10), if any.
    let mut ts_at = 0;
    let mut o = tcp_at + 20;
    while o < tcp_at + doff {
        match out[o] {
            0 => break,
            1 => o += 1,
            kind => {
                let l = *out.get(o + 1)? as usize;
                if l < 2 {
                    break;
                }
                if kind == 8 && l == 10 && o + 10 <= tcp_at + doff {
                    ts_at = o + 2;
                }
                o += l;
            }
        }
    }
    Some(Segment {
        key,
        seq,
        end: seq.wrapping_add(len),
        frame: out,
        tcp_at,
        ts_at,
        tcp_len,
        pseudo,
    })
}

struct Held {
    seg: Segment,
    at: Instant,
}

/// The segments held for one flow.
#[derive(Default)]
struct FlowHeld {
    /// Beyond the next expected byte: written back in order.
    segs: Vec<Held>,
    /// Copies of bytes the kernel already passed (retransmissions it could
    /// not re-inspect): forgotten once the server acknowledges them,
    /// written back for the kernel to decide when their time is up.
    copies: Vec<Held>,
    bytes: u64,
}

impl FlowHeld {
    fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.copies.is_empty()
    }
}

/// The reorder buffer: segments per flow, released in sequence order from
/// the flow's next expected byte. No I/O, so that it can be tested alone.
pub struct Buffer {
    limits: Limits,
    flows: HashMap<Half, FlowHeld>,
    total: u64,
    segments: u64,
    /// The most held for one flow, and in total.
    peak_flow: u64,
    peak_total: u64,
}

impl Buffer {
    pub fn new(limits: Limits) -> Self {
        Buffer {
            limits,
            flows: HashMap::new(),
            total: 0,
            segments: 0,
            peak_flow: 0,
            peak_total: 0,
        }
    }

    pub fn held_bytes(&self) -> u64 {
        self.total
    }

    pub fn held_segments(&self) -> u64 {
        self.segments
    }

    /// Bytes held for one flow.
    pub fn flow_bytes(&self, key: &Half) -> u64 {
        self.flows.get(key).map_or(0, |f| f.bytes)
    }

    /// The flows with something held.
    pub fn flows(&self) -> Vec<Half> {
        self.flows.keys().copied().collect()
    }

    /// Holds `seg`, unless a limit says no. A segment at a sequence number
    /// already held replaces it (a retransmission of it).
    pub fn hold(&mut self, seg: Segment, now: Instant) -> Result<(), DropReason> {
        self.keep(seg, now, false)
    }

    /// Holds `seg`, a copy of bytes the kernel already passed, until
    /// [`Buffer::settle_copies`] says what becomes of it; the same limits.
    pub fn hold_copy(&mut self, seg: Segment, now: Instant) -> Result<(), DropReason> {
        self.keep(seg, now, true)
    }

    fn keep(&mut self, seg: Segment, now: Instant, copy: bool) -> Result<(), DropReason> {
        let size = seg.frame.len() as u64;
        let f = self.flows.entry(seg.key).or_default();
        let list = if copy { &mut f.copies } else { &mut f.segs };
        let old = list.iter().position(|h| h.seg.seq == seg.seq);
        let freed = old.map(|i| list[i].seg.frame.len() as u64).unwrap_or(0);
        let refused = if f.bytes - freed + size > self.limits.flow_bytes {
            Some(DropReason::FlowLimit)
        } else if self.total - freed + size > self.limits.total_bytes {
            Some(DropReason::TotalLimit)
        } else {
            None
        };
        if let Some(why) = refused {
            if f.is_empty() {
                self.flows.remove(&seg.key);
            }
            return Err(why);
        }
        let held = Held { seg, at: now };
        let list = if copy { &mut f.copies } else { &mut f.segs };
        match old {
            Some(i) => list[i] = held,
            None => {
                list.push(held);
                self.segments += 1;
            }
        }
        f.bytes = f.bytes - freed + size;
        self.total = self.total - freed + size;
        self.peak_flow = self.peak_flow.max(f.bytes);
        self.peak_total = self.peak_total.max(self.total);
        Ok(())
    }

    /// The frames of `key` that can go now that the client's next expected
    /// byte is `next`, in the order to write them: each starts at or before
    /// the end of the one before. Segments wholly before `next` were passed
    /// in another copy and are forgotten.
    pub fn release(&mut self, key: &Half, mut next: u32) -> Vec<Segment> {
        let mut out = Vec::new();
        let Some(f) = self.flows.get_mut(key) else {
            return out;
        };
        loop {
            let mut gone = 0u64;
            let mut n = 0u64;
            f.segs.retain(|h| {
                let keep = seq_diff(h.seg.end, next) > 0;
                if !keep {
                    gone += h.seg.frame.len() as u64;
                    n += 1;
                }
                keep
            });
            f.bytes -= gone;
            self.total -= gone;
            self.segments -= n;
            // The one that starts at or before `next` and reaches furthest.
            let pick = f
                .segs
                .iter()
                .enumerate()
                .filter(|(_, h)| seq_diff(h.seg.seq, next) <= 0)
                .max_by_key(|(_, h)| seq_diff(h.seg.end, next))
                .map(|(i, _)| i);
            let Some(i) = pick else { break };
            let h = f.segs.swap_remove(i);
            let size = h.seg.frame.len() as u64;
            f.bytes -= size;
            self.total -= size;
            self.segments -= 1;
            next = h.seg.end;
            out.push(h.seg);
        }
        if f.is_empty() {
            self.flows.remove(key);
        }
        out
    }

    /// The copies of `key` once the server has acknowledged `acked` (if it
    /// acknowledged anything) at time `now`: those it acknowledged are
    /// forgotten (it has their bytes); those held for the hold time are
    /// returned, to be written back for the kernel to decide (it drops
    /// them, unless they have been acknowledged in between).
    pub fn settle_copies(&mut self, key: &Half, acked: Option<u32>, now: Instant) -> Vec<Segment> {
        let mut out = Vec::new();
        let Some(f) = self.flows.get_mut(key) else {
            return out;
        };
        let hold = self.limits.hold;
        let (mut gone, mut n) = (0u64, 0u64);
        let mut i = 0;
        while i < f.copies.len() {
            let h = &f.copies[i];
            let have = acked.is_some_and(|a| seq_diff(h.seg.end, a) <= 0);
            if have || now.duration_since(h.at) >= hold {
                let h = f.copies.swap_remove(i);
                gone += h.seg.frame.len() as u64;
                n += 1;
                if !have {
                    out.push(h.seg);
                }
            } else {
                i += 1;
            }
        }
        f.bytes -= gone;
        self.total -= gone;
        self.segments -= n;
        if f.is_empty() {
            self.flows.remove(key);
        }
        out
    }

    /// Drops what was held longer than the limit; returns the flow and
    /// sequence number of each.
    pub fn expire(&mut self, now: Instant) -> Vec<(Half, u32)> {
        let hold = self.limits.hold;
        let mut dropped = Vec::new();
        let (mut total, mut segments) = (self.total, self.segments);
        self.flows.retain(|key, f| {
            f.segs.retain(|h| {
                let keep = now.duration_since(h.at) < hold;
                if !keep {
                    let size = h.seg.frame.len() as u64;
                    f.bytes -= size;
                    total -= size;
                    segments -= 1;
                    dropped.push((*key, h.seg.seq));
                }
                keep
            });
            !f.is_empty()
        });
        self.total = total;
        self.segments = segments;
        dropped
    }

    /// Forgets a flow (its entry is gone); returns how many were dropped.
    pub fn forget(&mut self, key: &Half) -> u64 {
        match self.flows.remove(key) {
            Some(f) => {
                let n = (f.segs.len() + f.copies.len()) as u64;
                self.total -= f.bytes;
                self.segments -= n;
                n
            }
            None => 0,
        }
    }
}

/// The segments the daemon dropped, by reason: shown by `status`, logged
/// (rate-limited) with their reason, and added to `fallback_drops`.
struct Drops {
    total: [u64; DROP_REASONS],
    /// Not yet added to `fallback_drops`.
    unflushed: u64,
    log: RateLimit,
    /// Where each drop goes as an event (`inspector events`), if anywhere.
    events: Option<mpsc::Sender<Event>>,
}

impl Drops {
    fn new(events: Option<mpsc::Sender<Event>>) -> Self {
        Drops {
            total: [0; DROP_REASONS],
            unflushed: 0,
            log: RateLimit::new(5, Duration::from_secs(10)),
            events,
        }
    }

    /// The event of one dropped segment of `key` at `seq`, as the kernel
    /// reports its own drops. Events that find the relay's queue full are
    /// lost (the counters still count them).
    fn event(&self, why: DropReason, key: &Half, seq: u32) {
        let Some(tx) = &self.events else { return };
        let e = Event {
            ts_ns: monotonic_ns(),
            flow: key.flow,
            kind: kind::DROPPED,
            reason: why.event_reason(),
            verb_id: OTHER,
            seq,
            ..Default::default()
        };
        let _ = tx.try_send(e);
    }

    fn add(&mut self, why: DropReason, n: u64, what: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.total[why as usize] += n;
        self.unflushed += n;
        let (ok, suppressed) = self.log.allow(Instant::now());
        if let Some(n) = suppressed {
            warn!("reassembly fallback: {n} drop line(s) left out by the rate limit");
        }
        if ok {
            let so_far: Vec<String> = DropReason::ALL
                .iter()
                .filter(|r| self.total[**r as usize] > 0)
                .map(|r| format!("{} {}", r.name(), self.total[*r as usize]))
                .collect();
            warn!(
                "reassembly fallback: dropped {n} segment(s) ({}: {}); so far: {}",
                why.name(),
                what(),
                so_far.join(", ")
            );
        }
    }
}

/// The maps the daemon uses.
struct Maps {
    fallback: Array<MapData, Fallback>,
    flows: BpfHashMap<MapData, FlowKey, Flow>,
    counters: PerCpuArray<MapData, u64>,
    ports: Array<MapData, u64>,
}

impl Maps {
    fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Maps {
            fallback: Array::try_from(Map::Array(open_map(
                pin_dir,
                FALLBACK_MAP,
                "fallback settings",
            )?))?,
            flows: BpfHashMap::try_from(Map::HashMap(open_map(pin_dir, FLOWS_MAP, "flow table")?))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open_map(
                pin_dir,
                COUNTERS_MAP,
                "counters",
            )?))?,
            ports: Array::try_from(Map::Array(open_map(pin_dir, PORTS_MAP, "inspected ports")?))?,
        })
    }

    /// The next expected byte of a direction of a flow, and what the other
    /// end has acknowledged of that direction's stream (if it has), if the
    /// flow is tracked.
    fn position(&self, key: &Half) -> Option<(u32, Option<u32>)> {
        let f = self.flows.get(&key.flow, 0).ok()?;
        Some(if key.server {
            (f.server.cur.next_seq, f.client.cur.acked_if_known())
        } else {
            (f.client.cur.next_seq, f.server.cur.acked_if_known())
        })
    }

    /// Whether `port` is inspected: the kernel's rule for a segment's
    /// direction (to an inspected port: the client's).
    fn inspected(&self, port: u16) -> bool {
        let (word, bit) = port_slot(port);
        self.ports.get(&word, 0).is_ok_and(|w| w & bit != 0)
    }

    fn announce(&mut self, ifindex: u32, buf: &Buffer, drops: &Drops) -> Result<()> {
        let f = Fallback {
            ifindex,
            _pad: 0,
            heartbeat_ns: if ifindex == 0 { 0 } else { monotonic_ns() },
            held_bytes: buf.held_bytes(),
            held_segments: buf.held_segments(),
            dropped: drops.total,
            peak_flow_bytes: buf.peak_flow,
            peak_total_bytes: buf.peak_total,
        };
        self.fallback
            .set(0, f, 0)
            .context("writing the fallback heartbeat")
    }

    /// Adds `n` to `fallback_drops`, which only this process writes.
    fn count_drops(&mut self, n: u64) -> Result<()> {
        let idx = Counter::FallbackDrops as u32;
        let mut values: Vec<u64> = self.counters.get(&idx, 0)?.iter().copied().collect();
        values[0] += n;
        self.counters
            .set(idx, PerCpuValues::try_from(values)?, 0)
            .context("updating fallback_drops")
    }
}

/// Clears the fallback entry when the daemon stops (cleanly): the kernel
/// then drops out-of-order segments at once instead of until the heartbeat
/// goes stale.
pub fn withdraw(pin_dir: &Path) -> Result<()> {
    let mut maps = Maps::open(pin_dir)?;
    maps.announce(
        0,
        &Buffer::new(Limits {
            flow_bytes: 0,
            total_bytes: 0,
            hold: Duration::ZERO,
        }),
        &Drops::new(None),
    )
}

/// The fallback, announced to the kernel and ready to run.
pub struct Daemon {
    maps: Maps,
    wake_fd: AsyncFd<RingBuf<MapData>>,
    tap_fd: AsyncFd<OwnedFd>,
    tap: TapInfo,
    limits: Limits,
    events: mpsc::Sender<Event>,
}

/// What the running daemon keeps of its tap besides the descriptor.
struct TapInfo {
    ifindex: u32,
    mac: [u8; 6],
}

impl Daemon {
    /// Opens what the daemon uses and writes its first heartbeat, so that
    /// the kernel diverts from now on: called before the readiness line,
    /// since whoever waits for that line may reorder segments at once.
    /// Needs a tokio runtime context.
    /// Its drops go to `events` as events too.
    pub fn start(
        pin_dir: &Path,
        tap: Tap,
        limits: Limits,
        events: mpsc::Sender<Event>,
    ) -> Result<Daemon> {
        let mut maps = Maps::open(pin_dir)?;
        let ring = RingBuf::try_from(Map::RingBuf(open_map(
            pin_dir,
            WAKE_MAP,
            "fallback wake ring",
        )?))?;
        // SAFETY: the ring owns its fd, which stays open and the same for
        // as long as the AsyncFd owns the ring.
        let wake_fd = unsafe { AsyncFd::register(ring) }.context("polling the wake ring")?;
        // SAFETY: the OwnedFd stays open and the same for as long as the
        // AsyncFd owns it.
        let tap_fd = unsafe { AsyncFd::register(tap.fd) }.context("polling the tap")?;
        maps.announce(tap.ifindex, &Buffer::new(limits), &Drops::new(None))?;
        info!(
            "reassembly fallback on tap {} (holds up to {} bytes per flow, {} in total, for {:?})",
            tap.name, limits.flow_bytes, limits.total_bytes, limits.hold
        );
        Ok(Daemon {
            maps,
            wake_fd,
            tap_fd,
            tap: TapInfo {
                ifindex: tap.ifindex,
                mac: tap.mac,
            },
            limits,
            events,
        })
    }

    /// The fallback's life: read diverted frames, hold, release, expire,
    /// beat.
    pub async fn run(self) -> Result<()> {
        let Daemon {
            mut maps,
            mut wake_fd,
            tap_fd,
            tap,
            limits,
            events,
        } = self;
        let mut buf = Buffer::new(limits);
        let mut frame = vec![0u8; FRAME_MAX];
        let mut tick = tokio::time::interval(TICK);
        let mut drops = Drops::new(Some(events));
        // The highest TSval written back per flow. A held segment is older
        // than the retransmission that filled the gap before it: written back
        // with its own timestamp, the server would discard it (PAWS, RFC 7323)
        // after the kernel inspected and passed it, and its retransmission
        // could not be re-inspected. So it gets the newest TSval of its flow
        // (the server's RTT estimate is all that changes).
        let mut stamps: HashMap<Half, (u32, Instant)> = HashMap::new();
        // A segment that cannot be written is lost as a dropped one is (TCP
        // retransmits it): said, and the daemon goes on.
        let mut write = |mut seg: Segment| {
            if let Some(ts) = seg.tsval() {
                let now = Instant::now();
                if stamps.len() > 4096 {
                    stamps.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
                }
                let e = stamps.entry(seg.key).or_insert((ts, now));
                if seq_diff(ts, e.0) < 0 {
                    seg.restamp(e.0);
                } else {
                    e.0 = ts;
                }
                e.1 = now;
            }
            if let Err(e) = rustix::io::write(tap_fd.get_ref(), &seg.frame) {
                warn!("writing a segment back into the tap: {e}");
            }
        };
        loop {
            tokio::select! {
                guard = tap_fd.readable() => {
                    let mut guard = guard?;
                    loop {
                        match rustix::io::read(tap_fd.get_ref(), &mut frame) {
                            Ok(n) => {
                                let Some(mut seg) = parse(&frame[..n], tap.mac) else { continue };
                                if !maps.inspected(seg.key.flow.server_port) {
                                    seg.from_server();
                                }
                                let key = seg.key;
                                // Where the stream is now (the bytes before it
                                // may have passed before it got here: their
                                // wake is gone then).
                                let Some((next, acked)) = maps.position(&key) else {
                                    let n = 1 + buf.forget(&key);
                                    drops.event(DropReason::FlowGone, &key, seg.seq);
                                    drops.add(DropReason::FlowGone, n, || format!("{key:?}"));
                                    continue;
                                };
                                // Its turn already (an in-order segment of a
                                // flow with held ones goes through here too):
                                // straight back, whatever the limits, or a full
                                // buffer would refuse the very segment it waits
                                // for.
                                let (seq, end) = (seg.seq, seg.end);
                                let at = seq_diff(seq, next) <= 0;
                                if at && seq_diff(end, next) > 0 {
                                    write(seg);
                                    for f in buf.release(&key, end) {
                                        write(f);
                                    }
                                    continue;
                                }
                                if at {
                                    // Wholly before it: its bytes passed in
                                    // another copy. Kept until the server
                                    // acknowledges them, in case that copy
                                    // never reached it (then it is written
                                    // back when its time is up, and the
                                    // kernel decides).
                                    if acked.is_some_and(|a| seq_diff(end, a) <= 0) {
                                        continue;
                                    }
                                    if let Err(why) = buf.hold_copy(seg, Instant::now()) {
                                        drops.event(why, &key, seq);
                                        let (flow, total) = (buf.flow_bytes(&key), buf.held_bytes());
                                        drops.add(why, 1, || format!(
                                            "a copy of {seq}..{end}; {flow} held for the flow, \
                                             {total} in all"
                                        ));
                                    }
                                    continue;
                                }
                                if let Err(why) = buf.hold(seg, Instant::now()) {
                                    drops.event(why, &key, seq);
                                    let (flow, total) = (buf.flow_bytes(&key), buf.held_bytes());
                                    drops.add(why, 1, || format!(
                                        "{}..{}, {} bytes beyond the next expected byte {next}; \
                                         {flow} held for the flow, {total} in all",
                                        seq, end, seq_diff(seq, next)
                                    ));
                                    continue;
                                }
                                for f in buf.release(&key, next) {
                                    write(f);
                                }
                            }
                            Err(rustix::io::Errno::AGAIN) => {
                                guard.clear_ready();
                                break;
                            }
                            Err(e) => return Err(e).context("reading the tap"),
                        }
                    }
                }
                guard = wake_fd.readable_mut() => {
                    let mut guard = guard?;
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if item.len() < std::mem::size_of::<Wake>() {
                            continue;
                        }
                        // SAFETY: the item holds at least one Wake (checked
                        // above), read unaligned; Wake is plain data.
                        let w: Wake = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Wake) };
                        let half = Half {
                            flow: w.flow,
                            server: w.server != 0,
                        };
                        for f in buf.release(&half, w.next_seq) {
                            write(f);
                        }
                    }
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    // A wake lost to a full ring must not strand a flow.
                    for key in buf.flows() {
                        match maps.position(&key) {
                            Some((next, acked)) => {
                                for f in buf.release(&key, next) {
                                    write(f);
                                }
                                for f in buf.settle_copies(&key, acked, Instant::now()) {
                                    write(f);
                                }
                            }
                            None => {
                                let n = buf.forget(&key);
                                if n > 0 {
                                    drops.event(DropReason::FlowGone, &key, 0);
                                }
                                drops.add(DropReason::FlowGone, n, || format!("{key:?}"));
                            }
                        }
                    }
                    let expired = buf.expire(Instant::now());
                    for (key, seq) in &expired {
                        drops.event(DropReason::Timeout, key, *seq);
                    }
                    if let Some((key, seq)) = expired.first() {
                        let next = maps.position(key).map(|(n, _)| n);
                        drops.add(DropReason::Timeout, expired.len() as u64, || format!(
                            "held longer than {:?}; the first at {seq} while the flow expected {next:?}",
                            limits.hold
                        ));
                    }
                    if drops.unflushed > 0 {
                        if let Err(e) = maps.count_drops(drops.unflushed) {
                            warn!("{e:#}");
                        } else {
                            drops.unflushed = 0;
                        }
                    }
                    maps.announce(tap.ifindex, &buf, &drops)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            flow_bytes: 10_000,
            total_bytes: 15_000,
            hold: Duration::from_secs(2),
        }
    }

    fn key(port: u16) -> Half {
        Half {
            flow: FlowKey {
                client_port: port,
                server_port: 25,
                ..Default::default()
            },
            server: false,
        }
    }

    fn seg(port: u16, seq: u32, len: u32, size: usize) -> Segment {
        Segment {
            key: key(port),
            seq,
            end: seq.wrapping_add(len),
            frame: vec![seq as u8; size],
            tcp_at: 0,
            ts_at: 0,
            tcp_len: 0,
            pseudo: 0,
        }
    }

    #[test]
    fn releases_in_order_from_the_next_byte() {
        let mut b = Buffer::new(limits());
        let now = Instant::now();
        b.hold(seg(1, 300, 100, 10), now).unwrap();
        b.hold(seg(1, 200, 100, 20), now).unwrap();
        b.hold(seg(1, 500, 100, 30), now).unwrap();
        assert!(b.release(&key(1), 100).is_empty(), "a gap before 200");
        let out = b.release(&key(1), 200);
        assert_eq!(
            out.iter().map(|f| f.frame.len()).collect::<Vec<_>>(),
            [20, 10]
        );
        assert_eq!((b.held_segments(), b.held_bytes()), (1, 30));
        assert_eq!(b.release(&key(1), 500).len(), 1);
        assert_eq!((b.held_segments(), b.held_bytes()), (0, 0));
        assert!(b.flows().is_empty());
    }

    #[test]
    fn each_direction_of_a_flow_is_held_and_released_alone() {
        let mut b = Buffer::new(limits());
        let now = Instant::now();
        let mut reply = seg(1, 700, 100, 10);
        // As parse leaves it: from the server's port to the client's.
        reply.key.flow = FlowKey {
            client_port: 25,
            server_port: 1,
            ..Default::default()
        };
        reply.from_server();
        assert_eq!(
            reply.key,
            Half {
                server: true,
                ..key(1)
            }
        );
        b.hold(reply, now).unwrap();
        b.hold(seg(1, 700, 100, 20), now).unwrap();
        let out = b.release(&key(1), 700);
        assert_eq!(out.len(), 1, "the client's, not the server's");
        assert_eq!(out[0].frame.len(), 20);
        let server = Half {
            server: true,
            ..key(1)
        };
        assert_eq!(b.flows(), [server]);
        assert_eq!(b.release(&server, 700)[0].frame.len(), 10);
    }

    #[test]
    fn wraps_around_and_forgets_covered_segments() {
        let mut b = Buffer::new(limits());
        let now = Instant::now();
        b.hold(seg(1, u32::MAX - 9, 100, 10), now).unwrap();
        b.hold(seg(1, 90, 10, 10), now).unwrap();
        let out = b.release(&key(1), u32::MAX - 9);
        assert_eq!(out.len(), 2, "both, across the wrap");
        b.hold(seg(1, 1000, 10, 10), now).unwrap();
        assert!(
            b.release(&key(1), 2000).is_empty(),
            "passed in another copy"
        );
        assert_eq!(b.held_bytes(), 0);
    }

    #[test]
    fn limits_per_flow_and_in_total() {
        let mut b = Buffer::new(limits());
        let now = Instant::now();
        b.hold(seg(1, 100, 10, 9_000), now).unwrap();
        assert_eq!(
            b.hold(seg(1, 200, 10, 2_000), now),
            Err(DropReason::FlowLimit)
        );
        // A retransmission replaces what it repeats.
        b.hold(seg(1, 100, 10, 9_500), now).unwrap();
        b.hold(seg(2, 100, 10, 5_000), now).unwrap();
        assert_eq!(
            b.hold(seg(3, 100, 10, 1_000), now),
            Err(DropReason::TotalLimit)
        );
        assert_eq!((b.held_segments(), b.held_bytes()), (2, 14_500));
        let mut expired = b.expire(now + Duration::from_secs(3));
        expired.sort_by_key(|(k, seq)| (k.flow.client_port, *seq));
        assert_eq!(expired, [(key(1), 100), (key(2), 100)]);
        assert_eq!((b.held_segments(), b.held_bytes()), (0, 0));
        assert_eq!(
            (b.peak_flow, b.peak_total),
            (9_500, 14_500),
            "what it held at most"
        );
    }

    #[test]
    fn copies_wait_for_the_servers_acknowledgement() {
        let mut b = Buffer::new(limits());
        let now = Instant::now();
        b.hold_copy(seg(1, 100, 100, 10), now).unwrap();
        b.hold_copy(seg(1, 200, 100, 20), now).unwrap();
        b.hold(seg(1, 900, 100, 30), now).unwrap();
        assert!(
            b.release(&key(1), 800).is_empty(),
            "copies are not released in order, nor forgotten as passed"
        );
        assert_eq!(b.held_segments(), 3);
        assert!(b.settle_copies(&key(1), None, now).is_empty());
        assert!(
            b.settle_copies(&key(1), Some(200), now).is_empty(),
            "acknowledged: the server has them"
        );
        assert_eq!((b.held_segments(), b.held_bytes()), (2, 50));
        let back = b.settle_copies(&key(1), Some(250), now + Duration::from_secs(2));
        assert_eq!(
            back.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [200],
            "not acknowledged in its hold time: written back for the kernel"
        );
        assert_eq!((b.held_segments(), b.held_bytes()), (1, 30));
        assert_eq!(
            b.hold_copy(seg(1, 300, 100, 9_990), now),
            Err(DropReason::FlowLimit),
            "copies count against the same limits"
        );
        assert_eq!(b.release(&key(1), 900).len(), 1);
        assert!(b.flows().is_empty());
    }

    fn v4_frame(payload: &[u8], partial: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08;
        f[14] = 0x45;
        let total = (40 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&4000u16.to_be_bytes());
        f[36..38].copy_from_slice(&25u16.to_be_bytes());
        f[38..42].copy_from_slice(&1234u32.to_be_bytes());
        f[46] = 0x50;
        f.extend_from_slice(payload);
        let mut pseudo = sum16(&[10, 0, 0, 1, 10, 0, 0, 2], 0);
        pseudo += 6 + 20 + payload.len() as u32;
        let check = if partial {
            fold(pseudo)
        } else {
            !fold(sum16(&f[34..], pseudo))
        };
        f[50..52].copy_from_slice(&check.to_be_bytes());
        f.extend_from_slice(&[0, 0]); // Ethernet padding
        f
    }

    #[test]
    fn restamping_keeps_the_checksum_right() {
        // NOP NOP TS(tsval 1000, tsecr 7): a 32-byte TCP header.
        let mut f = v4_frame(b"", false);
        f.truncate(f.len() - 2);
        let opts = [1u8, 1, 8, 10, 0, 0, 3, 232, 0, 0, 0, 7];
        f.extend_from_slice(&opts);
        f.extend_from_slice(b"DATA\r\n");
        f[46] = 0x80;
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[50..52].copy_from_slice(&[0, 0]);
        let mut pseudo = sum16(&[10, 0, 0, 1, 10, 0, 0, 2], 0);
        pseudo += 6 + (f.len() - 34) as u32;
        let check = !fold(sum16(&f[34..], pseudo));
        f[50..52].copy_from_slice(&check.to_be_bytes());
        let mut s = parse(&f, [2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(s.tsval(), Some(1000));
        s.restamp(5000);
        assert_eq!(s.tsval(), Some(5000));
        assert_eq!(!fold(sum16(&s.frame[34..], pseudo)), 0, "checksum verifies");
        assert_eq!(&s.frame[s.frame.len() - 6..], b"DATA\r\n");
    }

    #[test]
    fn parses_and_completes_a_partial_checksum() {
        let mac = [2, 0, 0, 0, 0, 9];
        let full = v4_frame(b"MAIL FROM:<a@b>\r\n", false);
        let s = parse(&full, mac).unwrap();
        assert_eq!((s.seq, s.end), (1234, 1234 + 17));
        assert_eq!((s.key.flow.client_port, s.key.flow.server_port), (4000, 25));
        assert_eq!(&s.key.flow.client[10..], &[0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(&s.frame[..6], &mac);
        assert_eq!(s.frame.len(), full.len() - 2, "padding removed");
        assert_eq!(
            &s.frame[14..],
            &full[14..full.len() - 2],
            "a complete checksum is kept"
        );
        let partial = v4_frame(b"MAIL FROM:<a@b>\r\n", true);
        let p = parse(&partial, mac).unwrap();
        assert_eq!(p.frame, s.frame, "the partial checksum is completed");
        let mut bad = full.clone();
        bad[51] ^= 1;
        let b = parse(&bad, mac).unwrap();
        assert_eq!(b.frame[51], bad[51], "a wrong checksum stays wrong");
    }
}
