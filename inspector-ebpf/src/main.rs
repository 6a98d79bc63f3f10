//! The inspector's kernel programs: `inspector_xdp`, and `inspector_tc` and
//! `inspector_tc_eg` (TC ingress and egress), which parse SMTP on the
//! inspected ports and mask disallowed command verbs in place. With the
//! `bench` feature, the object also holds the baselines of `cargo xtask
//! bench` (`bench.rs`); the object `inspector` embeds does not.
//!
//! The data path, top to bottom:
//!
//! - `main.rs`: the entry points; header parsing and the port check decide
//!   whether a packet is inspected (IP fragments are decided here);
//! - `headers.rs`: Ethernet, VLAN, IPv4, IPv6 and TCP headers, read through
//!   `packet.rs` (XDP frames and socket buffers behind one trait), whose
//!   bounds come from `access.rs`, where every verifier workaround lives;
//! - `segment.rs`: the per-segment decision for each direction (in order,
//!   retransmitted, out of order; pass, drop, reset), on the flow entry that
//!   `flow.rs` finds, creates and keeps (one half per direction), once
//!   `side.rs` believes a server-direction packet came from the server's
//!   side;
//! - `stream.rs`: runs the shared parser of `inspector-common` over the
//!   payload, chunk by chunk, from `bpf_loop` callbacks;
//! - `mask.rs`: writes the masks into the packet and fixes the checksum
//!   (`csum.rs`); `rst.rs` turns a segment into a RST;
//! - `report.rs`: counters and events; `maps.rs`: the maps;
//!   `workarea.rs`: the per-CPU work area all of this runs in; `words.rs`:
//!   struct copies that do not go through the BPF `memmove`.
#![no_std]
#![no_main]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte BPF stack (a flow entry alone is 432 bytes).
#![allow(clippy::needless_borrows_for_generic_args)]

mod access;
#[cfg(feature = "bench")]
mod bench;
mod csum;
mod flow;
mod headers;
mod maps;
mod mask;
mod packet;
mod report;
mod rst;
mod segment;
mod side;
mod stream;
mod words;
mod workarea;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use inspector_common::{
    config::{CFG_FRAGMENTS_PASS, CFG_MONITOR},
    counters::Counter,
    events,
    verbs::OTHER,
};

use crate::{
    headers::{Parsed, Ports, Tcp},
    maps::{config, port_inspected, work_area},
    packet::Packet,
    report::count,
    workarea::WorkArea,
};

/// XDP entry point: every frame of the interface passes through here.
/// Multi-buffer aware (`xdp.frags`): a veth or a NIC may hand it frames of
/// several buffers (GSO packets, jumbo frames); without frags support veth
/// turns GSO off on its peer, which costs a quarter of bulk throughput.
#[xdp(frags)]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// TC (clsact) entry point for ingress (and the reassembly fallback's
/// tap's ingress): for hosts where XDP does not fit, such as one that runs
/// the MTA itself (commands arrive on ingress, replies leave on egress,
/// through [`inspector_tc_eg`]).
#[classifier]
pub fn inspector_tc(ctx: TcContext) -> i32 {
    run(&ctx) as i32
}

/// TC egress: a program of its own (its name fits the kernel's 15 bytes),
/// because a TC program cannot tell which hook runs it, and a packet that
/// leaves by the interface it came in on (a one-armed gateway's, or a RST
/// the ingress hook turned around) looks on egress as it did on ingress.
/// Only what this host makes is inspected here (an MTA's replies): a
/// packet that came in was inspected by the ingress hook of its
/// interface, the inspector running on every interface it forwards
/// between. A second look would take its bytes for a retransmission, and
/// a server's packet, now sent from the gateway's MAC, for a forgery.
#[classifier]
pub fn inspector_tc_eg(ctx: TcContext) -> i32 {
    if ctx.ingress_ifindex() != 0 {
        return TcContext::PASS as i32;
    }
    run(&ctx) as i32
}

/// Parse the headers, decide whether the flow is inspected, inspect.
#[inline(always)]
fn run<P: Packet>(ctx: &P) -> u32 {
    count(Counter::PacketsSeen);
    let Some(w) = work_area() else {
        return P::PASS;
    };
    let parsed = classify(ctx, &mut w.packet.tcp);
    match parsed >> KIND_SHIFT {
        kind::TCP => {
            let client_side = port_inspected(w.packet.tcp.dst_port);
            if !client_side && !port_inspected(w.packet.tcp.src_port) {
                return P::PASS;
            }
            segment::inspect(ctx, client_side)
        }
        kind::FRAGMENT => {
            count(Counter::Fragments);
            // A first fragment of an inspected flow: without it the receiver
            // cannot reassemble the datagram, so dropping it is enough.
            let cfg = config();
            if ports_inspected(parsed) && cfg & (CFG_FRAGMENTS_PASS | CFG_MONITOR) == 0 {
                count(Counter::Dropped);
                return P::DROP;
            }
            P::PASS
        }
        kind::OVERSIZED => {
            // More than the inspector parses: never passed uninspected.
            if !ports_inspected(parsed) {
                return P::PASS;
            }
            too_large(w);
            if config() & CFG_MONITOR != 0 {
                return P::PASS;
            }
            P::DROP
        }
        kind::MALFORMED => {
            count(Counter::Malformed);
            // An IPv6 chain past what is followed may carry a segment of an
            // inspected flow that nobody read: fail closed. (Other broken
            // headers pass: no receiver takes them.)
            if parsed & UNFOLLOWED != 0 && config() & CFG_MONITOR == 0 {
                count(Counter::Dropped);
                return P::DROP;
            }
            P::PASS
        }
        _ => P::PASS,
    }
}

/// Counts and reports a segment of an inspected flow too large to parse,
/// with its flow as the inspected side sees it.
#[inline(always)]
fn too_large(w: &mut WorkArea) {
    let t = &w.packet.tcp;
    t.flow_key(port_inspected(t.dst_port), &mut w.packet.key);
    w.packet.seq = t.seq;
    w.packet.monitor = (config() & CFG_MONITOR != 0) as u32;
    if w.packet.monitor == 0 {
        count(Counter::Dropped);
    }
    report::send(w, events::kind::DROPPED, events::reason::TOO_LARGE, OTHER);
}

/// What [`classify`] found, in bits `KIND_SHIFT..` of its result.
mod kind {
    pub const OTHER: u64 = 0;
    pub const TCP: u64 = 1;
    pub const FRAGMENT: u64 = 2;
    pub const MALFORMED: u64 = 3;
    pub const OVERSIZED: u64 = 4;
}
/// With `kind::MALFORMED`: the headers are not broken, only more than are
/// followed (`Parsed::Unfollowed`).
const UNFOLLOWED: u64 = 1;
const KIND_SHIFT: u32 = 40;

/// Header parsing: the TCP headers go to `tcp` (in the work area); the
/// result is one word, the kind of packet and the [`Ports`] of a first
/// fragment. The headers are read in place, not copied onto the stack
/// (`Packet::at`): this frame lies beneath every later call, and the
/// verifier's 512-byte limit is on the sum of the frames along a call
/// chain.
#[inline(always)]
fn classify<P: Packet>(ctx: &P, tcp: &mut Tcp) -> u64 {
    match headers::parse(ctx, tcp) {
        Parsed::Tcp => kind::TCP << KIND_SHIFT,
        Parsed::Fragment(ports) => kind::FRAGMENT << KIND_SHIFT | ports.0,
        Parsed::Oversized(ports) => kind::OVERSIZED << KIND_SHIFT | ports.0,
        Parsed::Malformed => kind::MALFORMED << KIND_SHIFT,
        Parsed::Other => kind::OTHER << KIND_SHIFT,
        Parsed::Unfollowed => kind::MALFORMED << KIND_SHIFT | UNFOLLOWED,
    }
}

/// Whether the ports in a [`classify`] result are known and one of them
/// is inspected.
#[inline(always)]
fn ports_inspected(parsed: u64) -> bool {
    match Ports(parsed & (Ports::KNOWN | 0xffff_ffff)).get() {
        Some((src, dst)) => port_inspected(src) || port_inspected(dst),
        None => false,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: a reachable panic would make the verifier
    // reject the program ("last insn is not an exit or jmp").
    loop {}
}
