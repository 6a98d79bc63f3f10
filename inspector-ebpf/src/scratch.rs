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
    scan::{self, Words},
    smtp::{act, event, ClientState, Env, Out, Seg, ServerState, Shared},
    verbs::{PolicyEntry, VerbKey},
};

use crate::{
    headers::Tcp,
    maps::{count, count_n, count_verb, EVENTS, POLICY, SCRATCH},
    pkt::Packet,
};

/// Bytes parsed per chunk (see `inspector_common::scan::CHUNK`).
pub const BUF: usize = scan::CHUNK;

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
    /// Headers being rewritten into a RST (see `rst.rs`); twice as long as
    /// used, for the verifier's sake (see `buf`).
    pub hdr: [u8; 2 * crate::rst::HDR_MAX],
    /// A new flow entry is built here (too big for the stack).
    pub new_flow: Flow,
    /// Next segment offset to parse, and where this chunk stops.
    pub pos: u32,
    pub end: u32,
    /// Segment offset of `buf[0]`.
    pub base: u32,
    /// Packet offset of the payload.
    pub payload_off: u32,
    /// A payload load or store failed.
    pub load_failed: u32,
    /// Segment offset of the next chunk to parse.
    pub next_chunk: u32,
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
    /// Span of masked bytes of the chunk in `buf`, `[dirty_lo, dirty_hi)`;
    /// lo > hi when clean.
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

/// This CPU's scratch area.
#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

type Callback = unsafe extern "C" fn(u64, *mut c_void) -> i64;

/// Calls `cb` up to `n` times with `bpf_loop`. The callback works on the
/// scratch area, which it reaches through the pointer passed as context.
/// Handing `s` over this way also tells the compiler that the call changes
/// `*s`: a `&mut` it believed nobody else could touch would otherwise let
/// it keep stale copies of the fields across the call.
#[inline(always)]
fn for_each(n: u32, cb: Callback, s: &mut Scratch) {
    let mut ctx: *mut Scratch = s;
    unsafe {
        bpf_loop(
            n,
            cb as *mut c_void,
            &mut ctx as *mut *mut Scratch as *mut c_void,
            0,
        );
    }
}

/// The scratch area from a `for_each` callback's context.
#[inline(always)]
unsafe fn from_ctx(ctx: *mut c_void) -> Option<&'static mut Scratch> {
    let p = *(ctx as *mut *mut Scratch);
    if p.is_null() {
        None
    } else {
        Some(&mut *p)
    }
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
unsafe extern "C" fn mask_step(_i: u64, ctx: *mut c_void) -> i64 {
    let Some(s) = from_ctx(ctx) else {
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
    let rel = p - s.base;
    let idx = rel as usize & (BUF - 1);
    let old = s.buf[idx];
    if old != b'X' {
        s.buf[idx] = b'X';
        // The payload starts at an even offset from the TCP header, so an
        // even payload offset is the high byte of a checksum word.
        let shift = if p & 1 == 0 { 8 } else { 0 };
        s.csum_acc += (!((old as u32) << shift) & 0xffff) + ((b'X' as u32) << shift);
        s.masked_bytes += 1;
        if rel < s.dirty_lo {
            s.dirty_lo = rel;
        }
        if rel + 1 > s.dirty_hi {
            s.dirty_hi = rel + 1;
        }
    }
    0
}

/// Applies the spans recorded for the chunk in `buf` and writes the changed
/// bytes back into the packet.
#[inline(always)]
fn apply_masks<P: Packet>(p: &P, s: &mut Scratch) {
    if s.nmasks == 0 {
        return;
    }
    s.mask_idx = 0;
    s.mask_pos = 0;
    s.dirty_lo = u32::MAX;
    s.dirty_hi = 0;
    let before = s.masked_bytes;
    // Each call masks a byte or moves to the next span.
    let calls = (s.end - s.base) + MAX_MASKS as u32;
    for_each(calls, mask_step, s);
    if s.report != 0 {
        count_n(Counter::BytesMasked, (s.masked_bytes - before) as u64);
    }
    s.nmasks = 0;
    if s.monitor != 0 {
        return;
    }
    // Keep the bounds visible to the verifier: lo < BUF and n < BUF, and the
    // buffer is 2 * BUF long.
    let lo = unsafe { core::ptr::read_volatile(&s.dirty_lo) } as usize & (BUF - 1);
    let hi = s.dirty_hi as usize;
    if hi <= lo || hi > BUF {
        return;
    }
    let n = unsafe { core::ptr::read_volatile(&(hi - lo)) } & (BUF - 1);
    if n == 0 {
        return;
    }
    let off = s.payload_off + s.base + lo as u32;
    if !p.store(off, unsafe { s.buf.as_mut_ptr().add(lo) }, n as u32) {
        s.load_failed = 1;
    }
}

/// Loads segment bytes `[from, min(from + BUF, to))` into the buffer.
#[inline(always)]
fn load_chunk<P: Packet>(p: &P, s: &mut Scratch, from: u32, to: u32) -> bool {
    let mut n = to - from;
    if n > BUF as u32 {
        n = BUF as u32;
    }
    // Keep the bound in the code: the verifier must see 0 < n <= BUF.
    let n = unsafe { core::ptr::read_volatile(&n) } as usize;
    if n == 0 || n > BUF {
        return false;
    }
    s.base = from;
    s.pos = from;
    s.end = from + n as u32;
    if !p.load(s.payload_off + from, s.buf.as_mut_ptr(), n as u32) {
        s.load_failed = 1;
        return false;
    }
    true
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
                report(s, kind::MASKED, 0, out.verb_id);
            }
        }
        event::BODY_START => count(Counter::Bodies),
        event::CHUNK => count(Counter::BdatChunks),
        event::STARTTLS => count(Counter::StarttlsSessions),
        event::SASL_START => count(Counter::SaslExchanges),
        _ => {}
    }
}

/// Sends an event to `inspector events`. Written straight into the ring
/// (reserve/submit) rather than built on the small BPF stack. A full ring
/// only loses the event; the counters still have it.
#[inline(always)]
pub fn report(s: &Scratch, kind: u8, reason: u8, verb_id: u8) {
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        let ev = entry.as_mut_ptr();
        unsafe {
            (*ev).ts_ns = bpf_ktime_get_ns();
            (*ev).flow = s.key;
            (*ev).kind = kind;
            (*ev).reason = reason;
            (*ev).verb_id = verb_id;
            (*ev).monitor = s.monitor as u8;
            (*ev).verb = if kind == kind::MASKED {
                s.client.verb.to_le_bytes()
            } else {
                [0; 8]
            };
            (*ev).seq = s.seq;
        }
        entry.submit(0);
    }
}

/// The chunk buffer as the fast paths of `inspector_common::scan` read it.
struct ChunkWords<'a>(&'a [u8; 2 * BUF]);

impl Words for ChunkWords<'_> {
    /// The aligned little-endian word at buffer offset `at`. The mask keeps
    /// the index visibly inside the buffer for the verifier (callers only
    /// pass multiples of 8 below `BUF`, which it leaves as they are).
    #[inline(always)]
    fn word(&self, at: u32) -> u64 {
        let i = at as usize & (BUF - 8);
        u64::from_le(unsafe { (self.0.as_ptr().add(i) as *const u64).read() })
    }
}

unsafe extern "C" fn client_step(_i: u64, ctx: *mut c_void) -> i64 {
    let Some(s) = from_ctx(ctx) else {
        return 1;
    };
    if s.pos >= s.end {
        return 1;
    }
    let at = s.pos - s.base;
    let to = scan::skip_ahead(&mut s.client, &ChunkWords(&s.buf), at, s.end - s.base);
    if to != at {
        s.pos = s.base + to;
        return 0;
    }
    let b = s.buf[(s.pos - s.base) as usize & (BUF - 1)];
    let env = KernelEnv { shared: &s.shared };
    let out = s.client.step(b, s.pos, &mut s.seg, &env);
    handle(s, &out);
    if s.held != 0 {
        return 1;
    }
    s.pos += 1;
    0
}

unsafe extern "C" fn server_step(_i: u64, ctx: *mut c_void) -> i64 {
    let Some(s) = from_ctx(ctx) else {
        return 1;
    };
    if s.pos >= s.end {
        return 1;
    }
    let b = s.buf[(s.pos - s.base) as usize & (BUF - 1)];
    let out = s.server.step(b, s.shared.client_gate);
    s.shared.publish_server(&out);
    s.pos += 1;
    0
}

/// What a chunk callback needs: the scratch area and the packet, both by
/// pointer from the caller's stack, and the range to parse.
#[repr(C)]
struct ChunkCtx {
    s: *mut Scratch,
    pkt: *mut c_void,
    from: u32,
    to: u32,
}

/// Loads the next chunk of a `chunks` run into the buffer. Returns the
/// scratch area, the packet, the chunk's start and the run's start; `None`
/// once the run is over (or held, or a load failed).
#[inline(always)]
unsafe fn next_chunk<P: Packet>(ctx: *mut c_void) -> Option<(&'static mut Scratch, P, u32, u32)> {
    let c = &*(ctx as *const ChunkCtx);
    if c.s.is_null() {
        return None;
    }
    let s = &mut *c.s;
    let p = P::from_raw(c.pkt);
    let start = s.next_chunk;
    // A server run never holds; the check only ends client runs.
    if start >= c.to || s.held != 0 || s.load_failed != 0 || !load_chunk(&p, s, start, c.to) {
        return None;
    }
    Some((s, p, start, c.from))
}

/// One buffer-sized chunk of client bytes per call: load it, parse it byte
/// by byte (an inner `bpf_loop`), decide an open verb at its end, write the
/// masks back. Running the chunks from a `bpf_loop` too means the verifier
/// checks the parser callback once per call site, not once per chunk.
unsafe extern "C" fn client_chunk<P: Packet>(_i: u64, ctx: *mut c_void) -> i64 {
    let Some((s, p, start, from)) = next_chunk::<P>(ctx) else {
        return 1;
    };
    if start > from {
        s.seg.verb_start = start;
    }
    for_each(s.end - s.pos, client_step, s);
    if s.held != 0 {
        return 1;
    }
    let env = KernelEnv { shared: &s.shared };
    let out = s.client.end_segment(s.end, &s.seg, &env);
    handle(s, &out);
    apply_masks(&p, s);
    s.next_chunk = s.end;
    0
}

/// One chunk of server bytes per call.
unsafe extern "C" fn server_chunk<P: Packet>(_i: u64, ctx: *mut c_void) -> i64 {
    let Some((s, _, _, _)) = next_chunk::<P>(ctx) else {
        return 1;
    };
    for_each(s.end - s.pos, server_step, s);
    s.next_chunk = s.end;
    0
}

/// Runs `cb` over the chunks of `[from, to)`.
#[inline(always)]
fn chunks<P: Packet>(p: &P, s: &mut Scratch, from: u32, to: u32, cb: Callback) {
    s.next_chunk = from;
    let mut c = ChunkCtx {
        s,
        pkt: p.raw(),
        from,
        to,
    };
    unsafe {
        bpf_loop(
            P::MAX_CHUNKS,
            cb as *mut c_void,
            &mut c as *mut ChunkCtx as *mut c_void,
            0,
        );
    }
    // `s` was handed over through `c`; read the cursor back through it.
    let s = unsafe { &mut *c.s };
    if s.next_chunk < to && s.held == 0 {
        // More than MAX_CHUNKS buffers: never pass what was not read.
        s.load_failed = 1;
    }
}

/// Parses client bytes `[from, to)` of the segment, masking in the packet.
/// A segment larger than the buffer (TC sees GSO packets) is parsed in
/// chunks, each handled like a segment of its own: a verb cut by a chunk
/// boundary is decided as if TCP had cut it there.
#[inline(always)]
pub fn run_client<P: Packet>(p: &P, s: &mut Scratch, from: u32, to: u32) {
    if from < to {
        chunks(p, s, from, to, client_chunk::<P>);
    }
}

/// Parses server bytes `[from, to)` of the segment.
#[inline(always)]
pub fn run_server<P: Packet>(p: &P, s: &mut Scratch, from: u32, to: u32) {
    if from < to {
        chunks(p, s, from, to, server_chunk::<P>);
    }
}

/// Resets the per-segment fields.
#[inline(always)]
pub fn begin(s: &mut Scratch, seq: u32, payload_off: u32) {
    s.seq = seq;
    s.payload_off = payload_off;
    s.load_failed = 0;
    s.held = 0;
    s.report = 1;
    s.csum_acc = 0;
    s.nmasks = 0;
    s.overflow = 0;
    s.masked_bytes = 0;
    s.seg = Seg::default();
}
