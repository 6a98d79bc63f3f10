//! Per-flow state, shared by both directions and every interface the
//! program is attached to, in a hash keyed by [`FlowKey`]. An entry is made
//! only when a handshake completes (the client's ACK of a SYN-ACK believed
//! from the server's side); until then the handshake waits in a small LRU
//! map of its own ([`Handshake`]), so SYNs that never complete cannot fill
//! the flow table, and nothing evicts an inspected flow to make room
//! (docs/contract.md §6).
//!
//! Concurrency: the client-to-server and server-to-client packets of one flow
//! may be processed at the same time on two CPUs (two interfaces, two RX
//! queues). Instead of a lock, every field has one writer: [`ClientDir`] is
//! written only by the instance that sees client packets, [`ServerDir`] only
//! by the one that sees server packets, and what they tell each other goes
//! through the single-word fields of [`Shared`]. See `smtp.rs` for why that is
//! enough.

use crate::smtp::{ClientState, ServerState, Shared};

/// Name of the pinned flow table.
pub const FLOWS_MAP: &str = "INSPECTOR_FLOWS";
/// Default capacity of the flow table.
pub const DEFAULT_MAX_FLOWS: u32 = 65536;

/// How long a closed flow's entry stays, in seconds (late retransmissions
/// of the last segments must still be re-inspected, not passed as
/// midstream). `inspector attach` expires it then; the kernel reclaims it
/// if it needs the room.
pub const CLOSED_GRACE_SECS: u64 = 60;
/// How long an idle flow's entry stays, in seconds. SMTP servers time out
/// idle clients after 5 minutes (Postfix smtpd_timeout) and RFC 5321 lets a
/// client wait 10 minutes for the end-of-data reply.
pub const IDLE_TIMEOUT_SECS: u64 = 20 * 60;

/// Whether the entry `f` may go at time `now` (ns, CLOCK_MONOTONIC): closed
/// for [`CLOSED_GRACE_SECS`], or idle for [`IDLE_TIMEOUT_SECS`].
#[inline(always)]
pub fn reclaimable(f: &Flow, now: u64) -> bool {
    let mut last = f.created_ns;
    if f.client.cur.last_ns > last {
        last = f.client.cur.last_ns;
    }
    if f.server.cur.last_ns > last {
        last = f.server.cur.last_ns;
    }
    let idle = now.saturating_sub(last);
    let closed = (f.client.cur.flags | f.server.cur.flags) & (DIR_FIN | DIR_RST) != 0;
    (closed && idle >= CLOSED_GRACE_SECS * 1_000_000_000)
        || idle >= IDLE_TIMEOUT_SECS * 1_000_000_000
}

/// Name of the pinned map of handshakes in progress (an LRU).
pub const HANDSHAKES_MAP: &str = "INSPECTOR_HANDSHAKES";
/// Capacity of the handshake map. A flood of SYNs only pushes older
/// handshakes out of it: an honest one is lost only if more SYNs than this
/// pass between its SYN and its ACK (one round trip), and its client retries.
pub const HANDSHAKE_ENTRIES: u32 = 16384;

/// Name of the pinned map of live (not closed) flows per client address.
pub const CLIENT_FLOWS_MAP: &str = "INSPECTOR_CLIENT_FLOWS";
/// Default cap on the flows one client address may have in the table. Real
/// MTAs stay far below: Postfix's server limits a client to 50 concurrent
/// connections by default (smtpd_client_connection_count_limit), Exchange
/// to 20 per source, and a sending Postfix opens at most 20 to one
/// destination; 256 leaves room for a NAT gateway in front of many
/// submission clients, and keeps one address from holding more than a
/// 256th of the default table.
pub const DEFAULT_MAX_FLOWS_PER_CLIENT: u32 = 256;

/// A handshake in progress: the client's SYN was seen, its sequence numbers
/// are kept until its ACK completes the handshake.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshake {
    /// The client's next sequence number (its ISN + 1).
    pub client_next: u32,
    /// The server's next sequence number (its ISN + 1), once `HS_SYN_ACK`.
    pub server_next: u32,
    /// `HS_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

/// A SYN-ACK believed from the server's side answered the SYN.
pub const HS_SYN_ACK: u32 = 1;

/// A flow, oriented client to server whatever the packet's direction. IPv4
/// addresses are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
}

/// One direction's stream position and parser checkpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Next expected sequence number.
    pub next_seq: u32,
    /// Client direction: the end of the furthest segment diverted to the
    /// reassembly fallback (valid while `DIR_DIVERTED`).
    pub divert_end: u32,
    /// Highest acknowledgement this direction's sender has sent for the
    /// other direction (that is, how much of the other stream its peer has).
    pub acked: u32,
    /// `DIR_*` flags.
    pub flags: u32,
    /// Last time (bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC, at the tick's
    /// resolution) a packet of this direction was seen.
    pub last_ns: u64,
}

impl Cursor {
    /// The acknowledgement this direction's sender last sent, if it sent one.
    #[inline(always)]
    pub fn acked_if_known(&self) -> Option<u32> {
        if self.flags & DIR_ACKED != 0 {
            Some(self.acked)
        } else {
            None
        }
    }
}

/// This direction's sequence numbers are known (SYN or SYN-ACK seen).
pub const DIR_SYNCED: u32 = 1;
/// This direction sent a FIN.
pub const DIR_FIN: u32 = 2;
/// This direction sent a RST.
pub const DIR_RST: u32 = 4;
/// `acked` is valid.
pub const DIR_ACKED: u32 = 8;
/// The inspector reset this flow (client direction only): later client
/// payload is dropped.
pub const DIR_RESET: u32 = 16;
/// A limit's `drop-connection` action dropped this flow (client direction
/// only): every later segment of it, both ways, is dropped.
pub const DIR_DROPPED: u32 = 32;
/// Segments of this flow were diverted to the reassembly fallback and may
/// be held there (client direction only): each move of the next expected
/// byte is told to the daemon, until it passes `divert_end`.
pub const DIR_DIVERTED: u32 = 64;

/// Checkpoints kept per direction: the parser state at the start of each
/// of the last `CHECKPOINTS` in-order segments. A retransmission that starts
/// at one of them is re-inspected from it; four cover the segments a sender
/// typically has in flight when one is lost between gateway and server.
pub const CHECKPOINTS: usize = 4;

/// A ring of (sequence number, parser state at that sequence number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoints<S: Copy> {
    pub seq: [u32; CHECKPOINTS],
    pub state: [S; CHECKPOINTS],
    /// Bit i set: slot i holds a checkpoint.
    pub valid: u32,
    /// Slot the next checkpoint goes to.
    pub next: u32,
}

impl<S: Copy> Checkpoints<S> {
    /// Records that the stream at `seq` had parser state `state`.
    #[inline(always)]
    pub fn record(&mut self, seq: u32, state: &S) {
        let i = self.next as usize % CHECKPOINTS;
        self.seq[i] = seq;
        self.state[i] = *state;
        self.valid |= 1 << i;
        self.next = (self.next + 1) % CHECKPOINTS as u32;
    }

    /// The state in slot `i` (the modulo keeps a panic path out of BPF code).
    #[inline(always)]
    pub fn at(&self, i: usize) -> &S {
        &self.state[i % CHECKPOINTS]
    }

    /// The slot of the checkpoint at `seq`.
    #[inline(always)]
    pub fn find(&self, seq: u32) -> Option<usize> {
        let mut i = 0;
        while i < CHECKPOINTS {
            if self.valid & (1 << i) != 0 && self.seq[i] == seq {
                return Some(i);
            }
            i += 1;
        }
        None
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientDir {
    pub state: ClientState,
    pub ckpts: Checkpoints<ClientState>,
    pub cur: Cursor,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerDir {
    pub state: ServerState,
    pub ckpts: Checkpoints<ServerState>,
    pub cur: Cursor,
}

/// A flow-table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub client: ClientDir,
    pub server: ServerDir,
    pub shared: Shared,
    /// When the flow was created (bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC,
    /// at the tick's resolution), written once.
    pub created_ns: u64,
}

/// How a segment relates to what was already inspected in its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegClass {
    /// Starts exactly at the next expected byte.
    InOrder,
    /// Starts beyond it: a gap. Dropped, so the sender retransmits in order.
    Future,
    /// Starts before it: `overlap` of its bytes (possibly more than it has)
    /// were inspected already. Re-inspected from a checkpoint if there is
    /// one at its start.
    Old { overlap: u32 },
    /// Old bytes the receiver already acknowledged: it will discard them.
    Acked,
}

/// Signed distance `a - b` in sequence space.
#[inline(always)]
pub const fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// Classifies a segment with payload (`len > 0`) of one direction.
/// `peer_acked` is the acknowledgement the receiver last sent, if known.
#[inline(always)]
pub fn classify(seq: u32, len: u32, cur: &Cursor, peer_acked: Option<u32>) -> SegClass {
    let d = seq_diff(seq, cur.next_seq);
    if d == 0 {
        return SegClass::InOrder;
    }
    if d > 0 {
        return SegClass::Future;
    }
    let end = seq.wrapping_add(len);
    if let Some(acked) = peer_acked {
        if seq_diff(end, acked) <= 0 {
            return SegClass::Acked;
        }
    }
    SegClass::Old {
        overlap: cur.next_seq.wrapping_sub(seq),
    }
}

/// What a retransmission must be compared with after re-inspection: the
/// state at its end, which is the current state if it reaches the next
/// expected byte, or the checkpoint at its end otherwise. `None` when no
/// state is known there (it ends inside an earlier segment). By reference:
/// the kernel compares it where it lies instead of copying it first.
#[inline(always)]
pub fn expected_after<'a, S: Copy>(
    seq: u32,
    len: u32,
    overlap: u32,
    current: &'a S,
    ckpts: &'a Checkpoints<S>,
) -> Option<&'a S> {
    if len >= overlap {
        return Some(current);
    }
    ckpts.find(seq.wrapping_add(len)).map(|i| ckpts.at(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(next: u32) -> Cursor {
        Cursor {
            next_seq: next,
            ..Default::default()
        }
    }

    /// The kernel builds a new entry by zeroing it a word at a time
    /// (`inspector-ebpf`'s `words::zero`), which must be its default.
    #[test]
    fn the_default_flow_is_all_zero_bytes() {
        // SAFETY: every field of `Flow` is an integer or an array of them,
        // for which all-zero bytes are a valid value.
        let zeroed: Flow = unsafe { core::mem::zeroed() };
        assert_eq!(zeroed, Flow::default());
        assert!(size_of::<Flow>().is_multiple_of(8));
    }

    #[test]
    fn classes() {
        let c = cur(1000);
        assert_eq!(classify(1000, 5, &c, None), SegClass::InOrder);
        assert_eq!(classify(1001, 5, &c, None), SegClass::Future);
        assert_eq!(classify(990, 10, &c, None), SegClass::Old { overlap: 10 });
        assert_eq!(classify(990, 20, &c, None), SegClass::Old { overlap: 10 });
        assert_eq!(classify(980, 10, &c, None), SegClass::Old { overlap: 20 });
        assert_eq!(classify(980, 10, &c, Some(995)), SegClass::Acked);
        assert_eq!(
            classify(980, 20, &c, Some(995)),
            SegClass::Old { overlap: 20 }
        );
    }

    #[test]
    fn wraps() {
        let c = cur(5);
        assert_eq!(classify(5, 1, &c, None), SegClass::InOrder);
        assert_eq!(
            classify(u32::MAX - 4, 10, &c, None),
            SegClass::Old { overlap: 10 }
        );
        assert_eq!(classify(u32::MAX, 1, &c, Some(2)), SegClass::Acked);
    }

    #[test]
    fn checkpoint_ring_keeps_the_last_four() {
        let mut r: Checkpoints<u8> = Default::default();
        assert_eq!(r.find(0), None);
        for (i, seq) in [10u32, 20, 30, 40, 50].iter().enumerate() {
            r.record(*seq, &(i as u8));
        }
        assert_eq!(r.find(10), None, "the oldest was overwritten");
        for (i, seq) in [20u32, 30, 40, 50].iter().enumerate() {
            assert_eq!(*r.at(r.find(*seq).unwrap()), i as u8 + 1);
        }
        // A retransmission of [20, 30) ends at the checkpoint at 30.
        assert_eq!(expected_after(20, 10, 30, &9, &r), Some(&2));
        // One reaching the next expected byte compares with the current state.
        assert_eq!(expected_after(20, 30, 30, &9, &r), Some(&9));
        // One ending inside a segment cannot be checked.
        assert_eq!(expected_after(20, 5, 30, &9, &r), None);
    }
}
