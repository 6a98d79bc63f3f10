//! The reassembly fallback (docs/contract.md §5): a segment that
//! starts beyond the next expected byte is not dropped but redirected to a
//! tap device that `inspector attach` owns. The daemon holds such segments
//! per flow and writes them back into the tap, in sequence order, once the
//! kernel has inspected the bytes before them; the tap's ingress runs the
//! inspector again, so every byte is still parsed and masked by the kernel,
//! in order, from the flow's own state. The daemon only reorders.
//!
//! The server's direction is handled the same way: its segments reorder
//! too, and a gap in the replies would otherwise cost a drop.
//!
//! Handing over and back needs no shared state beyond this: the kernel
//! marks a direction of a flow (`DIR_DIVERTED`, in place) while segments
//! of it may be held, and tells the daemon through the wake ring each time
//! that direction's next expected byte moves, so the daemon knows when a
//! held segment has become the next one.

use crate::flow::FlowKey;

/// Name of the pinned one-entry array of [`Fallback`].
pub const FALLBACK_MAP: &str = "INSPECTOR_FALLBACK";
/// Name of the pinned ring of [`Wake`] records.
pub const WAKE_MAP: &str = "INSPECTOR_FALLBACK_WAKE";
/// Wake ring size in bytes (a power of two, a multiple of the page size).
pub const WAKE_BYTES: u32 = 256 * 1024;

/// The kernel diverts only while the daemon's heartbeat is younger than
/// this (ns); past it, segments are dropped as if there were no fallback.
/// A daemon that is killed cannot clear the entry, so the age is what
/// tells the kernel that nobody reads the tap.
pub const HEARTBEAT_TIMEOUT_NS: u64 = 2_000_000_000;

/// Default bytes (frames, headers included) held for one flow. An honest
/// client never sends more than the server's receive window beyond the
/// server's acknowledgement, so what waits behind one gap is at most that
/// window; a Linux server with the default `tcp_rmem` (6 MiB at most)
/// advertises up to about 4 MiB. Less cuts honest flows: 256 KiB dropped
/// segments of 1 MiB messages in the bench, where a flow needed up to
/// 370 KB behind one delayed segment.
pub const DEFAULT_FLOW_BYTES: u64 = 4 * 1024 * 1024;
/// Default bytes held in total: sixteen flows with a full window behind a
/// gap at once.
pub const DEFAULT_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// Default time a segment is held before it is dropped (ms).
pub const DEFAULT_HOLD_MS: u64 = 2000;

/// What the daemon tells the kernel (written by the daemon only, read by
/// the kernel a word at a time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    /// The tap the kernel redirects diverted segments to; 0: no fallback.
    pub ifindex: u32,
    pub _pad: u32,
    /// The daemon's last heartbeat (CLOCK_MONOTONIC ns, the clock of
    /// bpf_ktime_get_ns).
    pub heartbeat_ns: u64,
    /// Bytes and segments the daemon holds now (for `inspector status`).
    pub held_bytes: u64,
    pub held_segments: u64,
    /// Segments the daemon dropped since it started, by reason (for
    /// `inspector status`; `fallback_drops` is their sum over every daemon
    /// that ran). Indexed by [`DropReason`].
    pub dropped: [u64; DROP_REASONS],
    /// The most bytes the daemon has held for one flow, and in total, since
    /// it started: what `--fallback-flow-bytes` and `--fallback-total-bytes`
    /// must leave room for.
    pub peak_flow_bytes: u64,
    pub peak_total_bytes: u64,
}

/// Why the daemon dropped a segment it was handed.
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its flow already held `--fallback-flow-bytes`.
    FlowLimit = 0,
    /// Everything held reached `--fallback-total-bytes`.
    TotalLimit = 1,
    /// Held longer than `--fallback-hold-ms`.
    Timeout = 2,
    /// Its flow's entry was gone (expired or never made).
    FlowGone = 3,
}

/// How many [`DropReason`]s there are.
pub const DROP_REASONS: usize = 4;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::FlowLimit,
        DropReason::TotalLimit,
        DropReason::Timeout,
        DropReason::FlowGone,
    ];

    /// The `reason` of its event.
    pub fn event_reason(self) -> u8 {
        use crate::events::reason;
        match self {
            DropReason::FlowLimit => reason::FALLBACK_FLOW_LIMIT,
            DropReason::TotalLimit => reason::FALLBACK_TOTAL_LIMIT,
            DropReason::Timeout => reason::FALLBACK_TIMEOUT,
            DropReason::FlowGone => reason::FALLBACK_FLOW_GONE,
        }
    }

    /// Its name in `status` and the daemon's log.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::FlowLimit => "flow_limit",
            DropReason::TotalLimit => "total_limit",
            DropReason::Timeout => "timeout",
            DropReason::FlowGone => "flow_gone",
        }
    }
}

impl Fallback {
    /// Where to divert at time `now`, if the daemon is there.
    #[inline(always)]
    pub fn target(&self, now: u64) -> Option<u32> {
        // Signed: a heartbeat written after the program read its clock
        // (the daemon beats on another CPU) is a little in the future, and
        // just as fresh.
        let age = now.wrapping_sub(self.heartbeat_ns) as i64;
        let fresh = age > -(HEARTBEAT_TIMEOUT_NS as i64) && age < HEARTBEAT_TIMEOUT_NS as i64;
        if self.ifindex != 0 && fresh {
            Some(self.ifindex)
        } else {
            None
        }
    }
}

/// The next expected byte of one direction of a flow with diverted
/// segments moved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    pub flow: FlowKey,
    pub next_seq: u32,
    /// 1: the server's direction; 0: the client's.
    pub server: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_needs_a_tap_and_a_fresh_heartbeat() {
        let f = Fallback {
            ifindex: 7,
            heartbeat_ns: 10_000_000_000,
            ..Default::default()
        };
        assert_eq!(f.target(10_500_000_000), Some(7));
        assert_eq!(f.target(12_000_000_000), None, "stale heartbeat");
        assert_eq!(
            f.target(9_999_999_000),
            Some(7),
            "written after the clock was read"
        );
        assert_eq!(f.target(1_000_000_000), None, "from far in the future");
        let never = Fallback {
            heartbeat_ns: 0,
            ..f
        };
        assert_eq!(never.target(10_500_000_000), None, "never beat");
        let none = Fallback { ifindex: 0, ..f };
        assert_eq!(none.target(10_500_000_000), None);
    }
}
