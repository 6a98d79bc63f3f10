//! The inspector's kernel programs.
//!
//! Kept thin: parse the headers, decide whether the flow is inspected, count,
//! and (in later stages) hand the payload to the shared SMTP parser in
//! `inspector-common`.
#![no_std]
#![no_main]

mod access;
mod headers;
mod maps;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use inspector_common::counters::Counter;

use crate::headers::Parsed;
use crate::maps::{count, count_n, port_inspected};

/// XDP entry point: every frame of the interface passes through here.
#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    count(Counter::PacketsSeen);
    match headers::parse(&ctx) {
        Parsed::Tcp(tcp) => {
            if port_inspected(tcp.dst_port) || port_inspected(tcp.src_port) {
                count(Counter::PacketsInspected);
                count_n(Counter::BytesInspected, tcp.payload_len as u64);
            }
        }
        Parsed::Fragment => count(Counter::Fragments),
        Parsed::Malformed => count(Counter::Malformed),
        Parsed::Other => {}
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: a reachable panic would make the verifier
    // reject the program ("last insn is not an exit or jmp").
    loop {}
}
