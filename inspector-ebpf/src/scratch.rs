//! The per-byte parser loops. The payload is copied into a per-CPU scratch
//! buffer, and the shared parser of `inspector-common` runs over it from a
//! `bpf_loop` callback: the verifier checks the callback once, instead of
//! walking every path of a 1500-iteration loop (which it cannot).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_loop};
use inspector_common::{
    counters::Counter,
    events::{kind, Event},
    flow::{Flow, FlowKey},
    smtp::{act, event, ClientState, Env, Out, Seg, ServerState, Shared},
    verbs::{PolicyEntry, VerbKey},
};

use crate::{
    headers::Tcp,
    maps::{count, count_n, count_verb, EVENTS, POLICY, SCRATCH},
};

/// Largest payload parsed: more than any single-buffer XDP frame holds
/// (a 4 KiB page minus headroom and skb_shared_info).
pub const BUF: usize = 4096;

#[repr(C)]
pub struct Scratch {
    /// The payload, in `buf[..BUF]`. Twice as long as needed: the verifier
    /// cannot relate the start and the length of the masked span written
    /// back, each bounded by BUF, so their sum must fit.
    pub buf: [u8; 2 * BUF],
    pub client: ClientState,
    pub server: ServerState,
    pub seg: Seg,
    /// Snapshot of the flow's shared words (client runs read it, server runs
    /// publish into it).
    pub shared: Shared,
    pub key: FlowKey,
    /// The segment's headers, copied here by the entry point. Reading them
    /// back from map memory also makes every header-parsing path (VLAN
    /// tags, IPv6 extension headers) look alike to the verifier afterwards,
    /// so it checks the inspection logic once instead of once per path.
    pub tcp: Tcp,
    /// A new flow entry is built here (too big for the stack).
    pub new_flow: Flow,
    /// Next segment offset to parse, and where this run stops.
    pub pos: u32,
    pub end: u32,
    /// Payload length (the whole segment).
    pub len: u32,
    pub seq: u32,
    /// Set when a step returned HOLD.
    pub held: u32,
    /// Count commands and send events (0 while re-inspecting).
    pub report: u32,
    /// Monitor mode: report what would be masked.
    pub monitor: u32,
    /// Spans to mask, `(from, to)`, in segment order.
    pub masks: [(u32, u32); MAX_MASKS],
    pub nmasks: u32,
    /// More spans than `masks` holds.
    pub overflow: u32,
    /// Cursor of `mask_step`.
    pub mask_idx: u32,
    pub mask_pos: u32,
    pub masked_bytes: u32,
    /// Span of masked bytes `[dirty_lo, dirty_hi)`; lo > hi when clean.
    pub dirty_lo: u32,
    pub dirty_hi: u32,
    /// Ones'-complement sum of (~old + new) over masked 16-bit words.
    pub csum_acc: u32,
}

/// The kernel's view of the parser environment.
struct KernelEnv<'a> {
    shared: &'a Shared,
}

impl Env for KernelEnv<'_> {
    #[inline(always)]
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        unsafe { POLICY.get(&key).copied() }
    }
    #[inline(always)]
    fn gate_reply(&self, unit: u32) -> Option<u16> {
        self.shared.gate_reply(unit)
    }
    #[inline(always)]
    fn chunking(&self) -> bool {
        self.shared.chunking != 0
    }
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Masked spans one segment can carry. A segment with more (hundreds of
/// disallowed commands in one packet) is dropped and counted.
pub const MAX_MASKS: usize = 32;

/// Records that `[from, to)` must be masked. Spans arrive in order; a span
/// that continues the previous one extends it.
#[inline(always)]
fn add_mask(s: &mut Scratch, from: u32, to: u32) {
    let n = s.nmasks as usize;
    if n > 0 {
        let last = &mut s.masks[(n - 1) & (MAX_MASKS - 1)];
        if last.1 >= from {
            if to > last.1 {
                last.1 = to;
            }
            return;
        }
    }
    if n >= MAX_MASKS {
        s.overflow = 1;
        return;
    }
    s.masks[n & (MAX_MASKS - 1)] = (from, to);
    s.nmasks += 1;
}

/// One masked byte per call: walks the spans recorded by the parse loop,
/// writes `X` into the buffer and accounts for the checksum. Kept apart
/// from the parser callback so that each callback stays small for the
/// verifier.
unsafe extern "C" fn mask_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = scratch() else {
        return 1;
    };
    let ri = s.mask_idx as usize;
    if ri >= s.nmasks as usize {
        return 1;
    }
    let (from, to) = s.masks[ri & (MAX_MASKS - 1)];
    let p = if s.mask_pos < from { from } else { s.mask_pos };
    if p >= to {
        s.mask_idx += 1;
        return 0;
    }
    s.mask_pos = p + 1;
    let idx = p as usize & (BUF - 1);
    let old = s.buf[idx];
    if old != b'X' {
        s.buf[idx] = b'X';
        // The payload starts at an even offset from the TCP header, so an
        // even payload offset is the high byte of a checksum word.
        let shift = if p & 1 == 0 { 8 } else { 0 };
        s.csum_acc += (!((old as u32) << shift) & 0xffff) + ((b'X' as u32) << shift);
        s.masked_bytes += 1;
        if p < s.dirty_lo {
            s.dirty_lo = p;
        }
        if p + 1 > s.dirty_hi {
            s.dirty_hi = p + 1;
        }
    }
    0
}

/// Applies every recorded span to the buffer.
#[inline(always)]
pub fn apply_masks(s: &mut Scratch) {
    if s.nmasks == 0 {
        return;
    }
    s.mask_idx = 0;
    s.mask_pos = 0;
    // Each call masks a byte or moves to the next span.
    let calls = s.len + MAX_MASKS as u32;
    unsafe {
        bpf_loop(calls, mask_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    if s.report != 0 || s.masked_bytes != 0 {
        count_n(Counter::BytesMasked, s.masked_bytes as u64);
    }
}

#[inline(always)]
fn handle(s: &mut Scratch, out: &Out) {
    match out.act {
        act::HOLD => {
            s.held = 1;
            return;
        }
        act::MASK => add_mask(s, out.mask_from, out.mask_to),
        _ => {}
    }
    if s.report == 0 {
        return;
    }
    match out.event {
        event::COMMAND => {
            count(Counter::CommandsSeen);
            count_verb(out.verb_id, false);
            if out.masked != 0 {
                count(Counter::CommandsMasked);
                count_verb(out.verb_id, true);
                report_masked(s, out.verb_id);
            }
        }
        event::BODY_START => count(Counter::Bodies),
        event::CHUNK => count(Counter::BdatChunks),
        event::STARTTLS => count(Counter::StarttlsSessions),
        event::SASL_START => count(Counter::SaslExchanges),
        _ => {}
    }
}

#[inline(always)]
fn report_masked(s: &Scratch, verb_id: u8) {
    let ev = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        flow: s.key,
        kind: kind::MASKED,
        reason: 0,
        verb_id,
        monitor: s.monitor as u8,
        verb: s.client.verb.to_le_bytes(),
        seq: s.seq,
    };
    // A full ring only loses the event; the counters still have it.
    let _ = EVENTS.output::<Event>(&ev, 0);
}

unsafe extern "C" fn client_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = scratch() else {
        return 1;
    };
    if s.pos >= s.end {
        return 1;
    }
    let b = s.buf[s.pos as usize & (BUF - 1)];
    let env = KernelEnv { shared: &s.shared };
    let out = s.client.step(b, s.pos, &mut s.seg, &env);
    handle(s, &out);
    if s.held != 0 {
        return 1;
    }
    s.pos += 1;
    0
}

unsafe extern "C" fn server_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = scratch() else {
        return 1;
    };
    if s.pos >= s.end {
        return 1;
    }
    let b = s.buf[s.pos as usize & (BUF - 1)];
    let out = s.server.step(b, s.shared.client_gate);
    s.shared.publish_server(&out);
    s.pos += 1;
    0
}

/// Parses client bytes `[from, to)` of the segment in the scratch buffer.
/// With `finish`, also decides a verb left open at `to`.
#[inline(always)]
pub fn run_client(s: &mut Scratch, from: u32, to: u32, finish: bool) {
    s.pos = from;
    s.end = to;
    if to > from {
        unsafe {
            bpf_loop(
                to - from,
                client_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
    if finish && s.held == 0 {
        let env = KernelEnv { shared: &s.shared };
        let out = s.client.end_segment(to, &s.seg, &env);
        handle(s, &out);
    }
}

/// Parses server bytes `[from, to)` of the segment in the scratch buffer.
#[inline(always)]
pub fn run_server(s: &mut Scratch, from: u32, to: u32) {
    s.pos = from;
    s.end = to;
    if to > from {
        unsafe {
            bpf_loop(
                to - from,
                server_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
}

/// Resets the per-segment fields.
#[inline(always)]
pub fn begin(s: &mut Scratch, seq: u32, len: u32, monitor: bool) {
    s.seq = seq;
    s.len = len;
    s.held = 0;
    s.report = 1;
    s.monitor = monitor as u32;
    s.dirty_lo = u32::MAX;
    s.dirty_hi = 0;
    s.csum_acc = 0;
    s.nmasks = 0;
    s.overflow = 0;
    s.masked_bytes = 0;
    s.seg = Seg::default();
}

pub fn get() -> Option<&'static mut Scratch> {
    scratch()
}
