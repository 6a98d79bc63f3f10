//! Per-flow state, shared by both directions and every interface the
//! program is attached to, in an LRU hash keyed by [`FlowKey`].
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
    /// Sequence number of the last in-order segment; the checkpoint is the
    /// parser state just before it.
    pub ckpt_seq: u32,
    /// Highest acknowledgement this direction's sender has sent for the
    /// other direction (that is, how much of the other stream its peer has).
    pub acked: u32,
    /// `DIR_*` flags.
    pub flags: u32,
    /// Last time (bpf_ktime_get_ns) a packet of this direction was seen.
    pub last_ns: u64,
}

/// This direction's sequence numbers are known (SYN or SYN-ACK seen).
pub const DIR_SYNCED: u32 = 1;
/// This direction sent a FIN.
pub const DIR_FIN: u32 = 2;
/// This direction sent a RST.
pub const DIR_RST: u32 = 4;
/// `acked` is valid.
pub const DIR_ACKED: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientDir {
    pub state: ClientState,
    pub ckpt: ClientState,
    pub cur: Cursor,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerDir {
    pub state: ServerState,
    pub ckpt: ServerState,
    pub cur: Cursor,
}

/// A flow-table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub client: ClientDir,
    pub server: ServerDir,
    pub shared: Shared,
    /// When the SYN was seen (bpf_ktime_get_ns), written once at creation.
    pub created_ns: u64,
}

/// How a segment relates to what was already inspected in its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegClass {
    /// Starts exactly at the next expected byte.
    InOrder,
    /// Starts beyond it: a gap. Dropped, so the sender retransmits in order.
    Future,
    /// Starts where the last in-order segment started and covers at least
    /// all of it: re-inspect from the checkpoint. `overlap` bytes were seen.
    Retransmit { overlap: u32 },
    /// Old bytes the receiver already acknowledged: it will discard them.
    Acked,
    /// Old bytes that cannot be re-inspected from the checkpoint.
    Unverifiable,
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
    let overlap = cur.next_seq.wrapping_sub(seq);
    if seq == cur.ckpt_seq && len >= overlap {
        return SegClass::Retransmit { overlap };
    }
    SegClass::Unverifiable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(next: u32, ckpt: u32) -> Cursor {
        Cursor {
            next_seq: next,
            ckpt_seq: ckpt,
            ..Default::default()
        }
    }

    #[test]
    fn classes() {
        let c = cur(1000, 990);
        assert_eq!(classify(1000, 5, &c, None), SegClass::InOrder);
        assert_eq!(classify(1001, 5, &c, None), SegClass::Future);
        assert_eq!(
            classify(990, 10, &c, None),
            SegClass::Retransmit { overlap: 10 }
        );
        assert_eq!(
            classify(990, 20, &c, None),
            SegClass::Retransmit { overlap: 10 }
        );
        assert_eq!(classify(990, 5, &c, None), SegClass::Unverifiable);
        assert_eq!(classify(980, 10, &c, None), SegClass::Unverifiable);
        assert_eq!(classify(980, 10, &c, Some(995)), SegClass::Acked);
        assert_eq!(classify(980, 20, &c, Some(995)), SegClass::Unverifiable);
    }

    #[test]
    fn wraps() {
        let c = cur(5, u32::MAX - 4);
        assert_eq!(classify(5, 1, &c, None), SegClass::InOrder);
        assert_eq!(
            classify(u32::MAX - 4, 10, &c, None),
            SegClass::Retransmit { overlap: 10 }
        );
        assert_eq!(classify(u32::MAX, 1, &c, Some(2)), SegClass::Acked);
    }
}
