//! Which side a packet of the server's direction came from
//! (docs/contract.md §9). The client is the adversary and can forge
//! anything from its own side, including packets that claim the server's
//! address and port; only where a packet arrived, and from which neighbour,
//! tells them apart. A server-direction packet is believed when:
//!
//! - this host made it (TC egress of a local packet, or the loopback
//!   device): nobody outside can inject there;
//! - on a forwarding host (a gateway, XDP or TC ingress), the kernel's own
//!   routing table sends packets for the claimed sender out of the very
//!   interface this one came in on (a reverse-path check), and the frame's
//!   source MAC is the next hop the neighbour table gives for that address.
//!   The interface tells the sides of a two-interface gateway apart; the MAC
//!   tells them apart on a one-armed gateway, where both sides share the
//!   interface. No neighbour entry means the side cannot be told: refused;
//!   the gateway resolved the server when it forwarded the client's SYN, so
//!   a real server's packets find one;
//! - on a host that does not forward (the MTA host itself), the host has a
//!   connection for the packet: the replies of its own outgoing sessions.
//!   Its incoming sessions' server packets leave on egress and never come
//!   in; one that comes in claiming a local server is forged.
//!
//! A forwarding host's check that passed is believed again for
//! [`BELIEVED_NS`] (and up to a tick of the coarse clock) without its
//! lookups, for packets of the same claimed sender with the same source MAC
//! on the same interface (this CPU's `workarea::SideCache`): a route or
//! neighbour change takes up to that long to apply to a server the check
//! already believed. The client's address and the ports, which the route
//! lookup also takes, are not in the key: where policy routing sends a
//! server's packets for different clients through different interfaces or
//! next hops, a pass for one client stands for the others within that
//! time. A forged packet riding on it must still come in on the server's
//! interface with its next hop's MAC: the layer-2 forgery below.
//!
//! What this cannot tell: a client that shares the server's layer-2 segment
//! and forges the server's (or the server-side router's) MAC, as on a
//! one-armed gateway whose clients and servers sit on one LAN.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN,
    },
    helpers::{bpf_fib_lookup, bpf_sk_lookup_tcp, bpf_sk_release},
};
use inspector_common::{cache_slot, events::reason};

use crate::{
    access::masked,
    headers::Tcp,
    packet::Packet,
    words,
    workarea::{Lookup, Seen, SIDE_SLOTS},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// The loopback device has this index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// How long a passed route check is believed again without its lookups
/// (see the module's documentation): one second, against the coarse
/// clock's tick.
pub const BELIEVED_NS: u64 = 1_000_000_000;

/// Whether the server-direction segment `t` came from the server's side:
/// 0 if so, otherwise the `reason` it is refused with. The lookups'
/// parameters are built in `l`; `now` is the coarse clock.
#[inline(always)]
pub fn check_server<P: Packet>(ctx: &P, t: &Tcp, l: &mut Lookup, now: u64) -> u8 {
    let ifindex = ctx.ingress_ifindex();
    if ifindex == 0 || ifindex == LOOPBACK_IFINDEX {
        return 0;
    }
    let Some(src_mac) = ctx.read::<[u8; 6]>(6) else {
        return reason::WRONG_MAC;
    };
    build_seen(l, t, ifindex, src_mac);
    if believed(l, now) {
        return 0;
    }
    route_check(ctx, t, l, ifindex, now)
}

/// [`check_server`]'s lookups, for a segment the cache does not hold:
/// the route back to the claimed sender, and the neighbour it names
/// against the frame's source MAC (in `l.seen`). Only a forwarding host's
/// pass is cached: a host that does not forward believes a connection,
/// not an address.
#[inline(never)]
fn route_check<P: Packet>(ctx: &P, t: &Tcp, l: &mut Lookup, ifindex: u32, now: u64) -> u8 {
    // All zeroes is the parameter block's "unset" (a plain-old-data
    // struct of integers).
    words::zero(&mut l.fib);
    let p = &mut l.fib;
    p.l4_protocol = IPPROTO_TCP;
    // The route back: from the client to the claimed sender (the ports
    // only choose among equal-cost routes).
    p.sport = t.dst_port.to_be();
    p.dport = t.src_port.to_be();
    p.ifindex = ifindex;
    if t.is_v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(&t.dst);
        p.__bindgen_anon_4.ipv6_dst = words(&t.src);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = word(&t.dst, 12);
        p.__bindgen_anon_4.ipv4_dst = word(&t.src, 12);
    }
    // SAFETY: `p` is a complete parameter block in the work area.
    let rc = unsafe { bpf_fib_lookup(ctx.raw(), p, size_of::<FibParams>() as i32, 0) };
    if rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64 {
        return local_connection(ctx, t, &mut l.tuple);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // Unreachable, blackholed, prohibited, or a local address
        // (NOT_FWDED): the server is not behind this interface.
        return reason::NOT_ROUTED;
    }
    let p = &l.fib;
    if p.ifindex != ifindex {
        return reason::WRONG_INTERFACE;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return reason::NO_NEIGHBOUR;
    }
    if mac_word(p.dmac) != l.seen.mac {
        return reason::WRONG_MAC;
    }
    remember(l, now);
    0
}

/// Fills `l.seen` with what segment `t` is cached under.
#[inline(always)]
fn build_seen(l: &mut Lookup, t: &Tcp, ifindex: u32, mac: [u8; 6]) {
    let a = &t.src;
    let half = |at: usize| {
        u64::from_ne_bytes([
            a[at],
            a[at + 1],
            a[at + 2],
            a[at + 3],
            a[at + 4],
            a[at + 5],
            a[at + 6],
            a[at + 7],
        ])
    };
    let s = &mut l.seen;
    s.addr = [half(0), half(8)];
    s.iface = ifindex | ((t.is_v6 as u32) << 31);
    s.mac = mac_word(mac);
}

/// The cache slot of `s`: the top bits of a Fibonacci hash of the whole
/// key, so that servers whose addresses differ in any byte (a few in one
/// /24, say) spread over the slots.
#[inline(always)]
fn slot(s: &Seen) -> usize {
    let k = s.addr[0] ^ s.addr[1] ^ s.mac ^ s.iface as u64;
    masked(cache_slot(k, SIDE_SLOTS), SIDE_SLOTS)
}

/// A MAC address as a word (its six bytes, then two zeroes).
#[inline(always)]
fn mac_word(m: [u8; 6]) -> u64 {
    u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
}

/// Whether a check of `l.seen`'s sender, interface and MAC passed less
/// than [`BELIEVED_NS`] ago (on this CPU).
#[inline(always)]
fn believed(l: &Lookup, now: u64) -> bool {
    let s = &l.seen;
    let i = slot(s);
    let c = &l.sides.seen[i];
    now < l.sides.until_ns[i]
        && c.iface == s.iface
        && c.mac == s.mac
        && c.addr[0] == s.addr[0]
        && c.addr[1] == s.addr[1]
}

/// Records that the check of `l.seen` passed at `now`.
#[inline(always)]
fn remember(l: &mut Lookup, now: u64) {
    let i = slot(&l.seen);
    let c = &mut l.sides.seen[i];
    c.addr = l.seen.addr;
    c.iface = l.seen.iface;
    c.mac = l.seen.mac;
    l.sides.until_ns[i] = now + BELIEVED_NS;
}

/// On a host that does not forward: 0 if the host has a connection (not a
/// listener) the segment `t` belongs to, as its receiver.
#[inline(always)]
fn local_connection<P: Packet>(ctx: &P, t: &Tcp, tuple: &mut bpf_sock_tuple) -> u8 {
    let size = if t.is_v6 {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: words(&t.src),
            daddr: words(&t.dst),
            sport: t.src_port.to_be(),
            dport: t.dst_port.to_be(),
        };
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } else {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: word(&t.src, 12),
            daddr: word(&t.dst, 12),
            sport: t.src_port.to_be(),
            dport: t.dst_port.to_be(),
        };
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    };
    // SAFETY: `tuple` holds `size` initialised bytes in the work area;
    // the socket reference is released below on every path.
    unsafe {
        let sk = bpf_sk_lookup_tcp(ctx.raw(), tuple, size as u32, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return reason::NO_SOCKET;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut _);
        // A listener matches any peer on its port: it says nothing about
        // this segment.
        if state == BPF_TCP_LISTEN {
            return reason::NO_SOCKET;
        }
    }
    0
}

/// An address as the kernel's `__be32[4]`: the same bytes in memory order.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 4), word(a, 8), word(a, 12)]
}

#[inline(always)]
fn word(a: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]])
}
