//! The stream driver: runs the shared parser of `inspector-common` over a
//! segment's payload.
//!
//! The payload is copied into the work area's buffer one chunk of `BUF`
//! bytes at a time and parsed from `bpf_loop` callbacks: the verifier checks
//! a callback once instead of walking every path of a 1500-iteration loop
//! (which it cannot). Two levels: a callback per chunk (load, parse, decide
//! an open verb at the chunk's end, mask), which runs a callback per step
//! (a word-at-a-time fast path of `inspector_common::scan` if one applies,
//! else one byte through the state machine). `inspector_common::smtp::
//! feed_client` drives the same calls in the same order for the userspace
//! tests.

use core::{ffi::c_void, ptr::addr_of_mut};

use aya_ebpf::helpers::bpf_loop;
use inspector_common::{
    cache_slot,
    config::{action, limit_action},
    events::reason,
    smtp::{act, Env, Out, Seg, ServerOut},
    verbs::{PolicyEntry, VerbKey, OTHER},
};

use crate::{
    access::{chunk_byte, masked, opaque, ChunkWords},
    maps::{policy_gen, POLICY},
    mask,
    packet::Packet,
    report,
    workarea::{borrow, for_each, from_ctx, Callback, PolicyCache, WorkArea, BUF, POLICY_SLOTS},
};

/// The kernel's view of the parser environment: the live policy map
/// (through this CPU's cache) and the snapshot of the words the server
/// direction published.
struct KernelEnv<'a> {
    shared: &'a inspector_common::smtp::Shared,
    /// The work area's `pcache`, a field apart from the parser's (which
    /// the parser has borrowed while it asks for a policy entry).
    cache: *mut PolicyCache,
}

impl<'a> KernelEnv<'a> {
    /// The environment of a client step or chunk end.
    #[inline(always)]
    fn new(shared: &'a inspector_common::smtp::Shared, cache: *mut PolicyCache) -> Self {
        KernelEnv { shared, cache }
    }
}

/// The live policy entry of a verb key, for the server's segment end (once
/// a segment: no cache needed).
#[inline(always)]
fn policy(key: VerbKey) -> Option<PolicyEntry> {
    Some(policy_entry(key))
}

/// The policy entry of a verb key, from the map. A key the map does not
/// hold is given as what it means, no flags and the counter slot of other
/// verbs, rather than as `None`: the parser treats both alike, and LLVM
/// turns some uses of a `None` into reads of a register that was never
/// written, which the verifier refuses (`!read_ok`).
#[inline(always)]
fn policy_entry(key: VerbKey) -> PolicyEntry {
    // SAFETY: the value is copied out at once; a concurrent update of the
    // entry by userspace can only make it read old or new flags.
    let entry = unsafe { POLICY.get(&key) };
    match entry {
        Some(e) => *e,
        None => PolicyEntry {
            flags: 0,
            verb_id: OTHER,
            _pad: [0; 2],
        },
    }
}

/// [`policy_entry`] through this CPU's cache (`workarea::PolicyCache`),
/// for the client's verbs and the keywords of the server's EHLO replies
/// alike (one key space): a key seen before since the last policy write
/// costs no map lookup. A policy change applies from the next segment on
/// (see [`begin`]), as if it had come just after this one.
#[inline(always)]
fn policy_cached(cache: *mut PolicyCache, key: VerbKey) -> PolicyEntry {
    // SAFETY: `cache` points to this CPU's work area's `pcache`, which
    // nothing else references during the call (see `KernelEnv::cache`).
    let cache = unsafe { &mut *cache };
    let slot = masked(cache_slot(key, POLICY_SLOTS), POLICY_SLOTS);
    if cache.valid & (1 << slot) != 0 && cache.keys[slot] == key {
        return cache.entries[slot];
    }
    let e = policy_entry(key);
    cache.keys[slot] = key;
    cache.entries[slot] = e;
    cache.valid |= 1 << slot;
    e
}

/// [`policy_cached`] for the server's EHLO keywords. The cache is found
/// through the work-area map (this CPU's entry, a lookup the verifier
/// inlines, taken as a raw pointer: the step holds the work area) rather
/// than through a pointer the step would carry: a closure holding one adds
/// to the step callback's stack, which the chain of calls cannot spare.
#[inline(always)]
fn keyword_policy(key: VerbKey) -> Option<PolicyEntry> {
    Some(match crate::maps::pcache_ptr() {
        Some(c) => policy_cached(c, key),
        None => policy_entry(key),
    })
}

impl Env for KernelEnv<'_> {
    #[inline(always)]
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        Some(policy_cached(self.cache, key))
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

/// Resets the per-segment fields before a segment is parsed; `cfg` is the
/// configuration word the segment is parsed under (read once per segment
/// by `segment::inspect`).
#[inline(always)]
pub fn begin(w: &mut WorkArea, seq: u32, payload_off: u32, cfg: u32) {
    w.packet.seq = seq;
    w.parser.config = cfg;
    w.packet.payload_off = payload_off;
    w.packet.load_failed = 0;
    w.parser.held = 0;
    w.parser.reset = 0;
    w.parser.limit = 0;
    w.parser.report = 1;
    w.parser.seg = Seg::default();
    w.masks.csum_acc = 0;
    w.masks.n = 0;
    w.masks.overflow = 0;
    w.masks.masked_bytes = 0;
    // The cache is kept while the policy generation stays what it was
    // when the cache was filled; any policy write moves it.
    let c = &mut w.pcache;
    match policy_gen() {
        Some(g) if g == c.gen => {}
        Some(g) => {
            c.valid = 0;
            c.gen = g;
        }
        None => c.valid = 0,
    }
}

/// Parses client bytes `[from, to)` of the segment, masking in the packet.
/// A segment larger than the buffer (TC sees GSO packets) is parsed in
/// chunks, each handled like a segment of its own: a verb cut by a chunk
/// boundary is decided as if TCP had cut it there.
#[inline(always)]
pub fn run_client<P: Packet>(p: &P, w: &mut WorkArea, from: u32, to: u32) {
    if from < to {
        chunks(p, w, from, to, client_chunk::<P>);
    }
}

/// Parses server bytes `[from, to)` of the segment.
#[inline(always)]
pub fn run_server<P: Packet>(p: &P, w: &mut WorkArea, from: u32, to: u32) {
    if from < to {
        chunks(p, w, from, to, server_chunk::<P>);
    }
}

/// What a chunk callback needs: the work area and the packet, both by
/// pointer from the caller's stack, and the range to parse.
#[repr(C)]
struct ChunkCtx {
    w: *mut WorkArea,
    pkt: *mut c_void,
    from: u32,
    to: u32,
}

/// Runs `cb` over the chunks of `[from, to)`.
#[inline(always)]
fn chunks<P: Packet>(p: &P, w: &mut WorkArea, from: u32, to: u32, cb: Callback) {
    w.parser.next_chunk = from;
    let mut c = ChunkCtx {
        w: &mut *w,
        pkt: p.raw(),
        from,
        to,
    };
    // SAFETY: `c` outlives the call; the callback reaches the work area
    // through `c.w` (made from `w`, see `workarea::for_each`) while this
    // function waits.
    unsafe {
        bpf_loop(
            P::MAX_CHUNKS,
            cb as *mut c_void,
            &mut c as *mut ChunkCtx as *mut c_void,
            0,
        );
    }
    if w.parser.next_chunk < to && w.parser.held == 0 {
        // More than MAX_CHUNKS buffers: never pass what was not read.
        w.packet.load_failed = 1;
    }
}

/// Loads the next chunk of a `chunks` run into the buffer. Returns the
/// work area, the packet, the chunk's start, the run's start and its end;
/// `None` once the run is over (or held, or a load failed).
///
/// # Safety
/// `ctx` is the `ChunkCtx` that `chunks` passed to `bpf_loop`.
#[inline(always)]
unsafe fn next_chunk<'a, P: Packet>(
    ctx: *mut c_void,
) -> Option<(&'a mut WorkArea, P, u32, u32, u32)> {
    // SAFETY: see the function's contract; `c.w` and `c.pkt` come from
    // `chunks`' own `&mut WorkArea` and packet.
    let (c, w, p) = unsafe {
        let c = &*(ctx as *const ChunkCtx);
        (c, borrow(c.w)?, P::from_raw(c.pkt))
    };
    let start = w.parser.next_chunk;
    // A server run never holds; the check only ends client runs.
    if start >= c.to || w.parser.held != 0 || w.packet.load_failed != 0 {
        return None;
    }
    if !load_chunk(&p, w, start, c.to) {
        return None;
    }
    Some((w, p, start, c.from, c.to))
}

/// Loads segment bytes `[from, min(from + BUF, to))` into the buffer.
#[inline(always)]
fn load_chunk<P: Packet>(p: &P, w: &mut WorkArea, from: u32, to: u32) -> bool {
    let mut n = to - from;
    if n > BUF as u32 {
        n = BUF as u32;
    }
    // The verifier must see 0 < n <= BUF (`access.rs`).
    let n = opaque(n) as usize;
    if n == 0 || n > BUF {
        return false;
    }
    w.parser.base = from;
    w.parser.pos = from;
    w.parser.end = from + n as u32;
    if !p.load(
        w.packet.payload_off + from,
        w.payload.as_mut_ptr(),
        n as u32,
    ) {
        w.packet.load_failed = 1;
        return false;
    }
    true
}

/// What a chunk callback returns to `bpf_loop`: 1 (stop) once the chunk
/// just parsed reached the run's end `to`, which saves the loop a call
/// that would only find the run over (most segments are one chunk).
#[inline(always)]
fn last_chunk(w: &WorkArea, to: u32) -> i64 {
    (w.parser.next_chunk >= to) as i64
}

/// One buffer-sized chunk of client bytes per call: load it, parse it (an
/// inner `bpf_loop`), decide an open verb at its end, write the masks back.
/// Running the chunks from a `bpf_loop` too means the verifier checks the
/// parser callback once per call site, not once per chunk.
unsafe extern "C" fn client_chunk<P: Packet>(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `chunks` runs this callback with its `ChunkCtx`.
    let Some((w, p, start, from, to)) = (unsafe { next_chunk::<P>(ctx) }) else {
        return 1;
    };
    if start > from {
        w.parser.seg.verb_start = start;
    }
    for_each(w.parser.end - w.parser.pos, client_step, w);
    if w.parser.held != 0 {
        return 1;
    }
    let env = KernelEnv::new(&w.parser.shared, addr_of_mut!(w.pcache));
    let out = w
        .parser
        .client
        .end_segment(w.parser.end, &w.parser.seg, &env);
    handle(w, &out);
    mask::apply(&p, w);
    w.parser.next_chunk = w.parser.end;
    last_chunk(w, to)
}

/// One chunk of server bytes per call: parse it, decide an EHLO keyword
/// open at its end, write the masks back (as for the client).
unsafe extern "C" fn server_chunk<P: Packet>(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `chunks` runs this callback with its `ChunkCtx`.
    let Some((w, p, start, from, to)) = (unsafe { next_chunk::<P>(ctx) }) else {
        return 1;
    };
    if start > from {
        w.parser.seg.verb_start = start;
    }
    for_each(w.parser.end - w.parser.pos, server_step, w);
    let out = w
        .parser
        .server
        .end_segment(w.parser.end, &w.parser.seg, &policy, w.parser.config);
    handle_server(w, &out);
    mask::apply(&p, w);
    w.parser.next_chunk = w.parser.end;
    last_chunk(w, to)
}

/// One round per call, as `feed_client` runs it: the verb fast path and
/// the argument skip and the line's end after it, or a skip of
/// `skip_ahead` (arguments, body lines, a BDAT chunk), or else one byte
/// through the state machine. A command line whose verb the fast path takes
/// costs one call. (A full byte step in the same call, rather than the
/// LF's own short path, makes the verifier walk every combination of the
/// three and pass its budget.)
unsafe extern "C" fn client_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `client_chunk` runs this callback through `for_each`.
    let Some(w) = (unsafe { from_ctx(ctx) }) else {
        return 1;
    };
    let s = &mut w.parser;
    if s.pos >= s.end {
        return 1;
    }
    if command_round(w) {
        // A second command line in the same call, if the first left the
        // parser at the start of another.
        command_round(w);
        // Stop the loop once the chunk is done (most segments end with a
        // command line): saves the call that would only find it so.
        return (w.parser.pos >= w.parser.end) as i64;
    }
    let cache = addr_of_mut!(w.pcache);
    let s = &mut w.parser;
    let at = s.pos - s.base;
    let len = s.end - s.base;
    let env = KernelEnv::new(&s.shared, cache);
    let to = s.client.skip_ahead(&ChunkWords(&w.payload), at, len);
    if to != at {
        s.pos = s.base + to;
        return 0;
    }
    let b = chunk_byte(&w.payload, at);
    let mut out = s.client.step(b, s.pos, &mut s.seg, &env);
    if out.limit != 0 {
        let cfg = s.config;
        s.client
            .limit_actions(&s.seg, |r| limit_action(cfg, r), &mut out);
    }
    handle(w, &out);
    if w.parser.held != 0 {
        return 1;
    }
    w.parser.pos += 1;
    0
}

/// The verb fast path and the rest of its line (`verb_ahead`, then
/// `line_ahead`), from `pos`: false if the fast path does not apply there.
#[inline(always)]
fn command_round(w: &mut WorkArea) -> bool {
    let cache = addr_of_mut!(w.pcache);
    let s = &mut w.parser;
    let at = s.pos - s.base;
    let len = s.end - s.base;
    let env = KernelEnv::new(&s.shared, cache);
    let (to, out) = s
        .client
        .verb_ahead(&ChunkWords(&w.payload), at, len, s.pos, &mut s.seg, &env);
    if to == at {
        return false;
    }
    handle(w, &out);
    let s = &mut w.parser;
    let chunking = s.shared.chunking != 0;
    let to = s
        .client
        .line_ahead(&ChunkWords(&w.payload), to, len, chunking);
    s.pos = s.base + to;
    true
}

/// One round per call, as `feed_server` runs it: the line fast path (a
/// reply line's code, its first word or EHLO keyword a word at a time, and
/// a jump to its LF where the bytes before it are plain), or else one byte
/// through the state machine.
unsafe extern "C" fn server_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `server_chunk` runs this callback through `for_each`.
    let Some(w) = (unsafe { from_ctx(ctx) }) else {
        return 1;
    };
    let s = &mut w.parser;
    if s.pos >= s.end {
        return 1;
    }
    let at = s.pos - s.base;
    let len = s.end - s.base;
    let (to, out) = s.server.line_ahead(
        &ChunkWords(&w.payload),
        at,
        len,
        s.pos,
        &mut s.seg,
        &s.shared,
        s.config,
    );
    if to != at {
        s.shared.publish_server(&out);
        handle_server(w, &out);
        w.parser.pos = w.parser.base + to;
        return 0;
    }
    let s = &mut w.parser;
    let b = chunk_byte(&w.payload, s.pos - s.base);
    let out = s
        .server
        .step(b, s.pos, &mut s.seg, &s.shared, &keyword_policy, s.config);
    s.shared.publish_server(&out);
    handle_server(w, &out);
    w.parser.pos += 1;
    // A reply's last byte is a LF, stepped here: stop the loop once the
    // chunk is done, which saves the call that would only find it so.
    (w.parser.pos >= w.parser.end) as i64
}

/// What a server step's result means for the segment: record a span to
/// mask, count a masked EHLO keyword (unless re-inspecting).
#[inline(always)]
fn handle_server(w: &mut WorkArea, out: &ServerOut) {
    if out.act == act::MASK {
        mask::add(&mut w.masks, out.mask_from, out.mask_to);
    }
    if w.parser.report != 0 {
        if out.keyword_masked != 0 {
            report::keyword_masked(w);
        }
        if out.banner_masked != 0 {
            report::count(inspector_common::counters::Counter::BannersMasked);
        }
    }
}

/// What a client step's result means for the segment: hold it, record a
/// span to mask, count (unless re-inspecting).
#[inline(always)]
fn handle(w: &mut WorkArea, out: &Out) {
    match out.act {
        act::HOLD => {
            w.parser.held = 1;
            return;
        }
        act::MASK => mask::add(&mut w.masks, out.mask_from, out.mask_to),
        _ => {}
    }
    if out.resets_flow() {
        w.parser.reset = reason::BDAT_MASKED as u32;
    }
    if out.limit != 0 && w.parser.report != 0 {
        // Every rule that matched is counted and reported; the strongest
        // action applies (a `mask` the parser could apply is in the spans
        // above already; one it could not became `reset`).
        report::limit(w, out.limit, out.limit_rule);
        match out.limit_act as u32 {
            action::RESET => {
                if w.parser.reset == 0 && w.packet.monitor == 0 {
                    w.parser.reset = report::limit_reason(out.limit_rule) as u32;
                }
            }
            action::DROP_CONNECTION => w.parser.limit = 1,
            _ => {}
        }
    }
    if w.parser.report != 0 {
        report::parser_event(w, out);
    }
}
