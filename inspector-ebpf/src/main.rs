//! The inspector's kernel programs.
//!
//! Kept thin: parse the headers, decide whether the flow is inspected, count,
//! and (in later stages) hand the payload to the shared SMTP parser in
//! `inspector-common`.
#![no_std]
#![no_main]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte BPF stack (a flow entry alone is 432 bytes).
#![allow(clippy::needless_borrows_for_generic_args)]

mod access;
mod csum;
mod headers;
mod inspect;
mod maps;
mod pkt;
mod rst;
mod scratch;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use inspector_common::{
    config::{CFG_FRAGMENTS_PASS, CFG_MONITOR},
    counters::Counter,
};

use crate::headers::Parsed;
use crate::maps::{config, count, port_inspected};
use crate::pkt::Packet;

/// XDP entry point: every frame of the interface passes through here.
/// Multi-buffer aware (`xdp.frags`): a veth or a NIC may hand it frames of
/// several buffers (GSO packets, jumbo frames); without frags support veth
/// turns GSO off on its peer, which costs a quarter of bulk throughput.
#[xdp(frags)]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// TC (clsact) entry point, for ingress and egress: for hosts where XDP
/// does not fit, such as one that runs the MTA itself (commands arrive on
/// ingress, replies leave on egress).
#[classifier]
pub fn inspector_tc(ctx: TcContext) -> i32 {
    run(&ctx) as i32
}

/// Benchmark baseline (`cargo xtask bench`, `bench` feature only): an XDP
/// program that only passes (multi-buffer aware, like `inspector_xdp`).
#[cfg(feature = "bench")]
#[xdp(frags)]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Benchmark baseline: the same header parsing as `inspector_xdp`, up to the
/// TCP header, then pass. The per-packet cost of the inspector on non-SMTP
/// traffic is measured against it. Never attached by `inspector`.
#[cfg(feature = "bench")]
#[xdp(frags)]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    let Some(s) = scratch::get() else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    // The parse writes the headers into map memory, which keeps it from
    // being optimised away; the verdict depends on it like the real one.
    match headers::parse(&ctx, &mut s.tcp) {
        Parsed::Malformed => {
            count(Counter::Malformed);
            aya_ebpf::bindings::xdp_action::XDP_PASS
        }
        _ => aya_ebpf::bindings::xdp_action::XDP_PASS,
    }
}

/// Parse the headers, decide whether the flow is inspected, inspect.
#[inline(always)]
fn run<P: Packet>(ctx: &P) -> u32 {
    if ctx.seen_on_ingress() {
        return P::PASS;
    }
    count(Counter::PacketsSeen);
    let Some(s) = scratch::get() else {
        return P::PASS;
    };
    match headers::parse(ctx, &mut s.tcp) {
        Parsed::Tcp => {
            let client_side = port_inspected(s.tcp.dst_port);
            if !client_side && !port_inspected(s.tcp.src_port) {
                return P::PASS;
            }
            inspect::segment(ctx, client_side)
        }
        Parsed::Fragment(ports) => {
            count(Counter::Fragments);
            // A first fragment of an inspected flow: without it the receiver
            // cannot reassemble the datagram, so dropping it is enough.
            let inspected = match ports {
                Some((src, dst)) => port_inspected(src) || port_inspected(dst),
                None => false,
            };
            let cfg = config();
            if inspected && cfg & (CFG_FRAGMENTS_PASS | CFG_MONITOR) == 0 {
                count(Counter::Dropped);
                return P::DROP;
            }
            P::PASS
        }
        Parsed::Malformed => {
            count(Counter::Malformed);
            P::PASS
        }
        Parsed::Other => P::PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: a reachable panic would make the verifier
    // reject the program ("last insn is not an exit or jmp").
    loop {}
}
