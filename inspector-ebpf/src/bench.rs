//! Baselines for `cargo xtask bench`, built only with the `bench` feature:
//! the object `inspector` embeds does not carry them.

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_NOEXIST},
    macros::{map, xdp},
    maps::HashMap,
    programs::XdpContext,
};
use inspector_common::{
    counters::Counter,
    flow::{FlowKey, DEFAULT_MAX_FLOWS},
};

use crate::{
    flow::{ACK, SYN},
    headers,
    maps::work_area,
    report::count,
};

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

/// The port [`bench_track`] tracks: the benchmark's SMTP server's.
const SMTP_PORT: u16 = 25;

/// The table of [`bench_track`]: as many entries as the inspector's flow
/// table, a value of two sequence numbers.
#[map(name = "BENCH_TRACK")]
static BENCH_TRACK: HashMap<FlowKey, [u64; 2]> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// The least an inspector that keeps per-flow state must do: the same
/// header parsing, then one lookup of the flow in a hash table of the
/// flow table's size (an insert for a client's SYN) and a write of the
/// direction's next sequence number. No handshake checks, no server-side
/// check, no payload read. Entries stay until the program is unloaded, as
/// the inspector keeps closed flows for a minute. End to end it shows what
/// tracking flows costs before anything is inspected (see the bench
/// README).
#[xdp(frags)]
pub fn bench_track(ctx: XdpContext) -> u32 {
    let Some(w) = work_area() else {
        return XDP_PASS;
    };
    if !matches!(
        headers::parse(&ctx, &mut w.packet.tcp),
        headers::Parsed::Tcp
    ) {
        return XDP_PASS;
    }
    let t = &w.packet.tcp;
    // The benchmark's port, a constant: nothing configures this object.
    let from_client = t.dst_port == SMTP_PORT;
    if !from_client && t.src_port != SMTP_PORT {
        return XDP_PASS;
    }
    let key = &mut w.packet.key;
    t.flow_key(from_client, key);
    let next = t.seq.wrapping_add(t.payload_len as u32) as u64;
    if from_client && t.flags & (SYN | ACK) == SYN {
        let _ = BENCH_TRACK.insert(key, &[next, 0], BPF_NOEXIST as u64);
    } else if let Some(v) = BENCH_TRACK.get_ptr_mut(key) {
        // SAFETY: a value of this map, written by this CPU only for this
        // packet; a race with another CPU only loses a benchmark's write.
        unsafe { (*v)[!from_client as usize] = next };
    }
    XDP_PASS
}
