//! The flow table: finding a segment's flow, creating it on a SYN, and each
//! direction's bookkeeping (acknowledgements, FIN, RST, the reset mark).
//!
//! An entry is shared by two CPUs: the client-to-server and the
//! server-to-client packets of one flow may be inspected at the same time.
//! Each direction writes only its own half ([`ClientDir`] or [`ServerDir`]),
//! so a [`Side`] holds a `&mut` to that half only. The other half is read
//! through a raw pointer, one field at a time, and each word of [`Shared`]
//! (written by one direction, read by the other) with one aligned 64-bit
//! volatile access, so a reader sees either the old or the new value.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::BPF_NOEXIST;
use inspector_common::{
    counters::Counter,
    flow::{
        seq_diff, ClientDir, Cursor, Flow, FlowKey, ServerDir, DIR_ACKED, DIR_DROPPED, DIR_FIN,
        DIR_RESET, DIR_RST, DIR_SYNCED,
    },
    smtp::{ClientState, Shared, GATE_SLOTS},
};

use crate::{maps::FLOWS, report::count, workarea::WorkArea};

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
/// close of the flow is counted).
#[inline(always)]
pub fn track(
    cur: &mut Cursor,
    peer: *const Cursor,
    flags: u8,
    seq: u32,
    ack: u32,
    now: u64,
    server: bool,
) {
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
    if flags & (FIN | RST) != 0 && !closed_before {
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
        // Read whether it is valid or not: a value the `None` path leaves
        // unwritten may be spilled to the stack, which the verifier refuses
        // (`!read_ok`).
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
    /// closed flow.
    #[inline(always)]
    pub fn mark_reset(&mut self) {
        if !self.closed() {
            count(Counter::FlowsClosed);
        }
        self.own.cur.flags |= DIR_RESET | DIR_RST;
    }

    /// A limit's drop-connection action: every later segment of the flow,
    /// both ways, is dropped; the entry counts as closed and expires like
    /// any closed flow.
    #[inline(always)]
    pub fn mark_dropped(&mut self) {
        if !self.closed() {
            count(Counter::FlowsClosed);
        }
        self.own.cur.flags |= DIR_DROPPED | DIR_RST;
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

/// A client's SYN: a new entry for the work area's key, unless a live flow
/// has it (a retransmitted SYN, or a stray one inside a live flow, keeps its
/// state: a forged SYN must not reset the parser).
#[inline(always)]
pub fn create(w: &mut WorkArea, seq: u32, now: u64) {
    let key = &w.packet.key;
    if let Some(old) = FLOWS.get_ptr(key) {
        // SAFETY: field projections into a live entry.
        let (c, s) = unsafe { (addr_of!((*old).client.cur), addr_of!((*old).server.cur)) };
        if (flags_of(c) | flags_of(s)) & (DIR_FIN | DIR_RST) == 0 {
            return;
        }
        let _ = FLOWS.remove(key);
    }
    let flow = &mut w.new_flow;
    *flow = Flow::default();
    flow.created_ns = now;
    flow.client.cur.next_seq = seq.wrapping_add(1);
    flow.client.cur.flags = DIR_SYNCED;
    flow.client.cur.last_ns = now;
    if FLOWS
        .insert(&w.packet.key, &w.new_flow, BPF_NOEXIST as u64)
        .is_ok()
    {
        count(Counter::FlowsCreated);
    }
}
