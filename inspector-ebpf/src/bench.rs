//! Baselines for `cargo xtask bench`, built only with the `bench` feature:
//! the object `inspector` embeds does not carry them.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use inspector_common::counters::Counter;

use crate::{headers, maps::work_area, report::count};

/// An XDP program that only passes (multi-buffer aware, like
/// `inspector_xdp`).
#[xdp(frags)]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The same header parsing as `inspector_xdp`, up to the TCP header, then
/// pass. The per-packet cost of the inspector on non-SMTP traffic is
/// measured against it.
#[xdp(frags)]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    let Some(w) = work_area() else {
        return XDP_PASS;
    };
    // The parse writes the headers into map memory, which keeps it from
    // being optimised away; the verdict depends on it like the real one.
    if let headers::Parsed::Malformed = headers::parse(&ctx, &mut w.packet.tcp) {
        count(Counter::Malformed);
    }
    XDP_PASS
}
