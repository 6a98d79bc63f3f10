//! The flow table: finding a segment's flow, admitting it when its
//! handshake completes, and each direction's bookkeeping (acknowledgements,
//! FIN, RST, the reset mark).
//!
//! Admission (docs/contract.md §6): a client's SYN only records a
//! handshake in `HANDSHAKES`, an LRU of its own; the SYN-ACK, believed from
//! the server's side, adds the server's sequence number; the client's ACK of
//! it makes the flow's entry. A spoofed SYN flood never completes, so it
//! only churns the handshake map. The table is a plain hash: when it is
//! full, or the client address already has its maximum of flows, the new
//! flow is refused; no entry is ever evicted to make room.
//!
//! An entry is shared by two CPUs: the client-to-server and the
//! server-to-client packets of one flow may be inspected at the same time.
//! Each direction writes only its own half ([`ClientDir`] or [`ServerDir`]),
//! so a [`Side`] holds a `&mut` to that half only. The other half is read
//! through a raw pointer, one field at a time, and each word of [`Shared`]
//! (written by one direction, read by the other) with one aligned 64-bit
//! volatile access, so a reader sees either the old or the new value.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_for_each_map_elem,
};
use inspector_common::{
    counters::Counter,
    events::reason,
    flow::{
        reclaimable, seq_diff, ClientDir, Cursor, Flow, FlowKey, Handshake, ServerDir, DIR_ACKED,
        DIR_DROPPED, DIR_FIN, DIR_RESET, DIR_RST, DIR_SYNCED, HS_SYN_ACK,
    },
    smtp::{ClientState, Shared, GATE_SLOTS},
};

use crate::{
    maps::{max_flows_per_client, CLIENT_FLOWS, FLOWS, HANDSHAKES},
    report::count,
    words,
    workarea::WorkArea,
};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A flow-table entry, as [`lookup`] found it.
pub struct Entry(*mut Flow);

/// The entry of `key`, if the table has one.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<Entry> {
    FLOWS.get_ptr_mut(key).map(Entry)
}

/// One direction's half of an entry.
pub trait Half {
    fn cur(&mut self) -> &mut Cursor;
    /// The cursor of the half at `p`, without making a reference to it.
    fn cursor_of(p: *const Self) -> *const Cursor;
}

impl Half for ClientDir {
    #[inline(always)]
    fn cur(&mut self) -> &mut Cursor {
        &mut self.cur
    }
    #[inline(always)]
    fn cursor_of(p: *const Self) -> *const Cursor {
        // SAFETY: a field projection, no memory is read.
        unsafe { addr_of!((*p).cur) }
    }
}

impl Half for ServerDir {
    #[inline(always)]
    fn cur(&mut self) -> &mut Cursor {
        &mut self.cur
    }
    #[inline(always)]
    fn cursor_of(p: *const Self) -> *const Cursor {
        // SAFETY: a field projection, no memory is read.
        unsafe { addr_of!((*p).cur) }
    }
}

/// A flow entry as the program instance of one direction sees it: its own
/// half to write, the other half and the shared words to read (and, for the
/// shared words this direction owns, to publish).
pub struct Side<'a, Own, Peer> {
    pub own: &'a mut Own,
    peer: *const Peer,
    shared: *mut Shared,
}

pub type ClientSide<'a> = Side<'a, ClientDir, ServerDir>;
pub type ServerSide<'a> = Side<'a, ServerDir, ClientDir>;

impl Entry {
    /// The client direction's view of the entry.
    #[inline(always)]
    pub fn client<'a>(&self) -> ClientSide<'a> {
        let f = self.0;
        // SAFETY: `f` is a live entry of the flow table (map memory stays
        // valid for the whole program run, even if the entry is deleted),
        // and only the client direction's program writes `client`.
        unsafe {
            Side {
                own: &mut *addr_of_mut!((*f).client),
                peer: addr_of!((*f).server),
                shared: addr_of_mut!((*f).shared),
            }
        }
    }

    /// The server direction's view of the entry.
    #[inline(always)]
    pub fn server<'a>(&self) -> ServerSide<'a> {
        let f = self.0;
        // SAFETY: as in `client`, for the server half.
        unsafe {
            Side {
                own: &mut *addr_of_mut!((*f).server),
                peer: addr_of!((*f).client),
                shared: addr_of_mut!((*f).shared),
            }
        }
    }

    /// The cursor of one direction's half, to write, and the other's, to
    /// read (see [`flags_of`]). For the bookkeeping before the decision; the
    /// caller lets go of it before it takes its direction's [`Side`].
    #[inline(always)]
    pub fn cursors<'a>(&self, client_side: bool) -> (&'a mut Cursor, *const Cursor) {
        let f = self.0;
        // SAFETY: as in `client`: only the direction of this segment writes
        // its own cursor.
        unsafe {
            if client_side {
                (
                    &mut *addr_of_mut!((*f).client.cur),
                    addr_of!((*f).server.cur),
                )
            } else {
                (
                    &mut *addr_of_mut!((*f).server.cur),
                    addr_of!((*f).client.cur),
                )
            }
        }
    }
}

/// Bookkeeping of a segment with TCP `flags` on its direction's cursor
/// `cur` (`peer`: the other direction's): the first SYN-ACK starts the
/// server's stream, acknowledgements advance, FIN and RST close (the first
/// close of the flow is counted). True if this segment is that first close.
#[inline(always)]
pub fn track(
    cur: &mut Cursor,
    peer: *const Cursor,
    flags: u8,
    seq: u32,
    ack: u32,
    now: u64,
    server: bool,
) -> bool {
    let closed_before = (cur.flags | flags_of(peer)) & (DIR_FIN | DIR_RST) != 0;
    if server && flags & (SYN | ACK) == (SYN | ACK) && cur.flags & DIR_SYNCED == 0 {
        // Only the first: a forged or late SYN-ACK must not move the stream.
        cur.next_seq = seq.wrapping_add(1);
        cur.flags |= DIR_SYNCED;
    }
    cur.last_ns = now;
    if flags & ACK != 0 {
        if cur.flags & DIR_ACKED == 0 || seq_diff(ack, cur.acked) > 0 {
            cur.acked = ack;
        }
        cur.flags |= DIR_ACKED;
    }
    let closes = flags & (FIN | RST) != 0 && !closed_before;
    if closes {
        count(Counter::FlowsClosed);
    }
    if flags & FIN != 0 {
        cur.flags |= DIR_FIN;
    }
    if flags & RST != 0 {
        cur.flags |= DIR_RST;
    }
    // The entry is not removed on FIN or RST: a FIN or RST that the
    // receiver then rejects (bad checksum, out of window) would otherwise
    // turn the rest of the flow into an uninspected midstream flow.
    // `inspector attach` expires closed and idle entries.
    closes
}

/// The `DIR_*` flags of a cursor another CPU may be writing.
#[inline(always)]
pub fn flags_of(cur: *const Cursor) -> u32 {
    // SAFETY: `cur` points into a live flow entry; one aligned 32-bit load.
    unsafe { read_volatile(addr_of!((*cur).flags)) }
}

impl<Own: Half, Peer: Half> Side<'_, Own, Peer> {
    /// The other direction's `DIR_*` flags.
    #[inline(always)]
    pub fn peer_flags(&self) -> u32 {
        flags_of(Peer::cursor_of(self.peer))
    }

    /// The acknowledgement the other direction's sender last sent, if any:
    /// how much of this direction's stream its receiver has.
    #[inline(always)]
    pub fn peer_acked(&self) -> Option<u32> {
        let cur = Peer::cursor_of(self.peer);
        // Loaded on both paths: an `Option` whose payload register is
        // undefined when `None` may be spilled as it is, and the verifier
        // refuses to read an unset register (TC program, "R4 !read_ok").
        // SAFETY: as in `flags_of`.
        let acked = unsafe { read_volatile(addr_of!((*cur).acked)) };
        if flags_of(cur) & DIR_ACKED == 0 {
            return None;
        }
        Some(acked)
    }

    /// Whether either direction has closed the flow (FIN or RST).
    #[inline(always)]
    pub fn closed(&mut self) -> bool {
        (self.own.cur().flags | self.peer_flags()) & (DIR_FIN | DIR_RST) != 0
    }

    /// A copy of the shared words, each read with one load.
    #[inline(always)]
    pub fn shared(&self) -> Shared {
        let p = self.shared;
        let mut s = Shared::default();
        // SAFETY: `p` points into a live flow entry; every field is one
        // aligned u64.
        unsafe {
            s.client_gate = read_volatile(addr_of!((*p).client_gate));
            for i in 0..GATE_SLOTS {
                s.gate_replies[i] = read_volatile(addr_of!((*p).gate_replies[i]));
            }
            s.chunking = read_volatile(addr_of!((*p).chunking));
            s.client_ehlo = read_volatile(addr_of!((*p).client_ehlo));
        }
        s
    }
}

impl ClientSide<'_> {
    /// Publishes the gate the client state waits on (`Shared::client_gate`)
    /// and its last EHLO (`Shared::client_ehlo`), both written by the
    /// client direction only, if they changed.
    #[inline(always)]
    pub fn publish(&self, st: &ClientState) {
        // SAFETY: `shared` points into a live flow entry; each field is one
        // aligned u64, written by this direction only.
        unsafe {
            if let Some(word) = st.gate_word() {
                let p = addr_of_mut!((*self.shared).client_gate);
                if read_volatile(p) != word {
                    write_volatile(p, word);
                }
            }
            if let Some(word) = st.ehlo_word() {
                let p = addr_of_mut!((*self.shared).client_ehlo);
                if read_volatile(p) != word {
                    write_volatile(p, word);
                }
            }
        }
    }

    /// The inspector resets the flow: later client segments are answered
    /// with a RST, and the entry counts as closed and expires like any
    /// closed flow. True if this closes the flow.
    #[inline(always)]
    pub fn mark_reset(&mut self) -> bool {
        let closes = !self.closed();
        if closes {
            count(Counter::FlowsClosed);
        }
        self.own.cur.flags |= DIR_RESET | DIR_RST;
        closes
    }

    /// A limit's drop-connection action: every later segment of the flow,
    /// both ways, is dropped; the entry counts as closed and expires like
    /// any closed flow. True if this closes the flow.
    #[inline(always)]
    pub fn mark_dropped(&mut self) -> bool {
        let closes = !self.closed();
        if closes {
            count(Counter::FlowsClosed);
        }
        self.own.cur.flags |= DIR_DROPPED | DIR_RST;
        closes
    }
}

impl ServerSide<'_> {
    /// Copies the server-written words of `snap` into the entry, each with
    /// one store, and only those that changed.
    #[inline(always)]
    pub fn publish(&self, snap: &Shared) {
        let p = self.shared;
        // SAFETY: `p` points into a live flow entry; each field is one
        // aligned u64, and these are written by this direction only.
        unsafe {
            for i in 0..GATE_SLOTS {
                let q = addr_of_mut!((*p).gate_replies[i]);
                if read_volatile(q) != snap.gate_replies[i] {
                    write_volatile(q, snap.gate_replies[i]);
                }
            }
            let q = addr_of_mut!((*p).chunking);
            if read_volatile(q) != snap.chunking {
                write_volatile(q, snap.chunking);
            }
        }
    }
}

/// Whether the entry at `f` is of a live flow (neither side closed it).
#[inline(always)]
fn live(f: *const Flow) -> bool {
    // SAFETY: field projections into a live entry.
    let (c, s) = unsafe { (addr_of!((*f).client.cur), addr_of!((*f).server.cur)) };
    (flags_of(c) | flags_of(s)) & (DIR_FIN | DIR_RST) == 0
}

impl Entry {
    /// Whether the flow is live (neither side closed it).
    #[inline(always)]
    pub fn live(&self) -> bool {
        live(self.0)
    }
}

/// Flows of `client` in the table, as counted (see `maps::CLIENT_FLOWS`).
#[inline(always)]
fn client_flows(client: &[u8; 16]) -> u64 {
    count_of(CLIENT_FLOWS.get_ptr_mut(client))
}

/// The count at `p`, a `CLIENT_FLOWS` value if any.
#[inline(always)]
fn count_of(p: Option<*mut u64>) -> u64 {
    match p {
        // SAFETY: a live map value; one aligned 64-bit load.
        Some(p) => unsafe { read_volatile(p) },
        None => 0,
    }
}

/// Why a new flow is refused (an event reason), or 0.
pub type Refusal = u8;

/// A client's SYN: the handshake is remembered in `HANDSHAKES` until the
/// client's ACK completes it. A live flow's entry (`found`, the flow
/// table's entry of the key) is left as it is (a retransmitted SYN, or a
/// forged one inside a live flow, must not reset the parser). Refused if
/// the client already has its maximum of flows.
#[inline(always)]
pub fn syn(w: &mut WorkArea, seq: u32, found: &Option<Entry>) -> Refusal {
    let key = &w.packet.key;
    if found.as_ref().is_some_and(|e| e.live()) {
        return 0;
    }
    if let Some(h) = HANDSHAKES.get_ptr(key) {
        // A retransmitted SYN (the SYN-ACK may be on its way, or lost to
        // the client) keeps what the handshake learnt.
        // SAFETY: a live map value; one aligned 32-bit load.
        if unsafe { read_volatile(addr_of!((*h).client_next)) } == seq.wrapping_add(1) {
            return 0;
        }
    }
    if client_flows(&key.client) >= max_flows_per_client() {
        return reason::CLIENT_CAP;
    }
    let h = Handshake {
        client_next: seq.wrapping_add(1),
        ..Handshake::default()
    };
    let _ = HANDSHAKES.insert(key, &h, 0);
    0
}

/// A SYN-ACK believed from the server's side (`side.rs` checked it): the
/// server's sequence numbers, if it answers the SYN of a handshake in
/// progress. The first one only.
#[inline(always)]
pub fn syn_ack(key: &FlowKey, seq: u32, ack: u32) {
    let Some(h) = HANDSHAKES.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value; the handshake's two directions write
    // different words (the client direction only removes the entry).
    unsafe {
        if (*h).flags & HS_SYN_ACK == 0 && (*h).client_next == ack {
            (*h).server_next = seq.wrapping_add(1);
            (*h).flags |= HS_SYN_ACK;
        }
    }
}

/// A client segment with ACK and no entry of a live flow: if it completes
/// a handshake in progress (it acknowledges exactly the believed SYN-ACK,
/// at the SYN's next sequence number), the flow gets its entry, both
/// directions synchronised. A closed flow's entry with the same key is
/// replaced (`replacing`: the table has an entry of the key, closed). Returns
/// a refusal if the table is full or the client has its maximum of flows;
/// 0 otherwise (admitted, or no handshake to complete).
#[inline(always)]
pub fn complete(w: &mut WorkArea, seq: u32, ack: u32, now: u64, replacing: bool) -> Refusal {
    let key = &w.packet.key;
    let Some(h) = HANDSHAKES.get_ptr(key) else {
        return 0;
    };
    // SAFETY: a live map value, copied out before the entry is removed.
    let h = unsafe { *h };
    if h.flags & HS_SYN_ACK == 0 || h.client_next != seq || h.server_next != ack {
        return 0;
    }
    let _ = HANDSHAKES.remove(key);
    // One lookup of the client's count, for the cap and the new flow.
    let counted = CLIENT_FLOWS.get_ptr_mut(&key.client);
    if count_of(counted) >= max_flows_per_client() {
        return reason::CLIENT_CAP;
    }
    let flow = &mut w.new_flow;
    // Not `Flow::default()`: LLVM makes that six calls of the BPF
    // `memset`, a byte per iteration over its 520 bytes.
    words::zero(flow);
    flow.created_ns = now;
    flow.client.cur.next_seq = seq;
    flow.client.cur.flags = DIR_SYNCED;
    flow.client.cur.last_ns = now;
    flow.server.cur.next_seq = ack;
    flow.server.cur.flags = DIR_SYNCED;
    flow.server.cur.last_ns = now;
    // Replacing a closed entry of the same key takes no new slot; if
    // `inspector attach`'s expiry removed it since the segment's lookup,
    // the flow is inserted anew.
    let replaced = replacing
        && FLOWS
            .insert(&w.packet.key, &w.new_flow, BPF_EXIST as u64)
            .is_ok();
    let inserted = replaced
        || FLOWS
            .insert(&w.packet.key, &w.new_flow, BPF_NOEXIST as u64)
            .is_ok();
    if !inserted
        && !(reclaim(w, now)
            && FLOWS
                .insert(&w.packet.key, &w.new_flow, BPF_NOEXIST as u64)
                .is_ok())
    {
        return reason::TABLE_FULL;
    }
    count(Counter::FlowsCreated);
    match counted {
        // The count read for the cap, unless a reclaim walked the table
        // since (while `attach`'s recount may have removed that entry).
        // SAFETY: as in `add_client_flow`.
        Some(p) if inserted => unsafe { write_volatile(p, read_volatile(p) + 1) },
        _ => add_client_flow(&w.packet.key.client),
    }
    0
}

/// How often one CPU may search a full table for an entry to reclaim: the
/// search walks the table, which a client must not be able to make every
/// SYN pay for.
const RECLAIM_EVERY_NS: u64 = 1_000_000_000;

/// What the reclaim callback gets: the work area (where it writes the key
/// it found) and the time.
#[repr(C)]
struct ReclaimCtx {
    area: *mut WorkArea,
    now: u64,
}

/// The table is full: removes one entry that may go (closed for
/// `CLOSED_GRACE_SECS`, or idle for `IDLE_TIMEOUT_SECS`, the same rule as
/// `inspector attach`'s expiry) to make room, so that the kernel side alone
/// never refuses every new flow because dead entries filled the table while
/// the daemon was down (docs/contract.md §6). A live flow is never taken.
/// At most one search per second per CPU. True if an entry was removed.
#[inline(always)]
fn reclaim(w: &mut WorkArea, now: u64) -> bool {
    if now.wrapping_sub(w.last_reclaim_ns) < RECLAIM_EVERY_NS && w.last_reclaim_ns != 0 {
        return false;
    }
    w.last_reclaim_ns = now;
    let mut ctx = ReclaimCtx {
        area: w as *mut WorkArea,
        now,
    };
    // SAFETY: `FLOWS` is a map definition the loader relocates; `ctx`
    // outlives the call, and the callback uses it only while this waits.
    let found = unsafe {
        bpf_for_each_map_elem(
            addr_of!(FLOWS) as *mut c_void,
            reclaim_cb as *mut c_void,
            &mut ctx as *mut ReclaimCtx as *mut c_void,
            0,
        )
    };
    // The helper returns how many entries it visited; the callback stops
    // at the first that may go and marks it by setting `now` to 0.
    if found <= 0 || ctx.now != 0 {
        return false;
    }
    let key = w.reclaim_key;
    // An idle flow that never closed still counts for its client.
    let was_live = FLOWS.get_ptr(&key).is_some_and(live);
    if FLOWS.remove(&key).is_err() {
        return false;
    }
    if was_live {
        client_flow_closed(&key.client);
    }
    count(Counter::FlowsReclaimed);
    true
}

/// The `bpf_for_each_map_elem` callback of [`reclaim`].
unsafe extern "C" fn reclaim_cb(
    _map: *mut c_void,
    key: *const FlowKey,
    value: *const Flow,
    ctx: *mut c_void,
) -> i64 {
    let ctx = ctx as *mut ReclaimCtx;
    // SAFETY: the helper hands over a live entry of the table and the
    // context `reclaim` made, whose work-area pointer is this CPU's entry.
    unsafe {
        if !reclaimable(&*value, (*ctx).now) {
            return 0;
        }
        (*(*ctx).area).reclaim_key = *key;
        (*ctx).now = 0;
    }
    1
}

/// One flow of `client` closed: it no longer counts against the cap (its
/// entry stays until it expires, for late retransmissions). Not atomic, as
/// in `add_client_flow`; a lost update is corrected by the next recount.
#[inline(always)]
pub fn client_flow_closed(client: &[u8; 16]) {
    if let Some(p) = CLIENT_FLOWS.get_ptr_mut(client) {
        // SAFETY: a live map value, one aligned word.
        unsafe {
            let n = read_volatile(p);
            write_volatile(p, n.saturating_sub(1));
        }
    }
}

/// One more flow for `client` in `CLIENT_FLOWS`.
#[inline(always)]
fn add_client_flow(client: &[u8; 16]) {
    if CLIENT_FLOWS.insert(client, &1, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    if let Some(p) = CLIENT_FLOWS.get_ptr_mut(client) {
        // SAFETY: a live map value, one aligned word. Not atomic (the BPF
        // target has no atomic read-modify-write in Rust's core): two flows
        // of one client admitted at the same instant on two CPUs may count
        // as one, which only loosens the cap until `inspector attach`
        // recounts.
        unsafe { write_volatile(p, read_volatile(p) + 1) };
    }
}
