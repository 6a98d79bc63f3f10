//! The inspector's kernel programs.
//!
//! Kept thin: parse the headers, decide whether the flow is inspected, count,
//! and (in later stages) hand the payload to the shared SMTP parser in
//! `inspector-common`.
#![no_std]
#![no_main]

mod access;
mod csum;
mod headers;
mod inspect;
mod maps;
mod scratch;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use inspector_common::{
    config::{CFG_FRAGMENTS_PASS, CFG_MONITOR},
    counters::Counter,
};

use crate::headers::Parsed;
use crate::maps::{config, count, port_inspected};

/// XDP entry point: every frame of the interface passes through here.
#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    count(Counter::PacketsSeen);
    let Some(s) = scratch::get() else {
        return xdp_action::XDP_PASS;
    };
    match headers::parse(&ctx, &mut s.tcp) {
        Parsed::Tcp => {
            let client_side = port_inspected(s.tcp.dst_port);
            if !client_side && !port_inspected(s.tcp.src_port) {
                return xdp_action::XDP_PASS;
            }
            inspect::segment(&ctx, client_side)
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
                return xdp_action::XDP_DROP;
            }
            xdp_action::XDP_PASS
        }
        Parsed::Malformed => {
            count(Counter::Malformed);
            xdp_action::XDP_PASS
        }
        Parsed::Other => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: a reachable panic would make the verifier
    // reject the program ("last insn is not an exit or jmp").
    loop {}
}
