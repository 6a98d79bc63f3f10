//! Records sent to userspace through the event ring buffer.

use crate::flow::FlowKey;

/// Name of the pinned ring buffer.
pub const EVENTS_MAP: &str = "INSPECTOR_EVENTS";
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// What happened.
pub mod kind {
    /// A command verb was masked.
    pub const MASKED: u8 = 1;
    /// A segment was dropped (the `reason` says why).
    pub const DROPPED: u8 = 2;
    /// A packet of a flow whose start was not seen passed (or was dropped).
    pub const MIDSTREAM: u8 = 3;
    /// A flow was reset (its segment turned into a RST to the server).
    pub const RESET: u8 = 4;
    /// A keyword of the server's reply to EHLO was masked (`verb` holds
    /// the keyword's first bytes).
    pub const KEYWORD_MASKED: u8 = 5;
    /// A limit matched (the `reason` names the rule); a `reset` or
    /// `drop-connection` action has an event of its own (a `mask` shows in
    /// `bytes_masked`).
    pub const LIMIT: u8 = 6;
    /// A packet of the server's direction came from elsewhere than the
    /// server's side (the `reason` says how that was told); it was dropped
    /// and changed no flow state.
    pub const SPOOFED: u8 = 7;
    /// A new flow was refused (the `reason` says why).
    pub const REFUSED: u8 = 8;
}

/// Why a segment was dropped (`Event::reason`).
pub mod reason {
    pub const OUT_OF_ORDER: u8 = 1;
    pub const CONFLICT: u8 = 2;
    pub const UNVERIFIABLE: u8 = 3;
    pub const AWAITING_REPLY: u8 = 4;
    pub const TOO_MANY_MASKS: u8 = 5;
    pub const FRAGMENT: u8 = 6;
    pub const MIDSTREAM: u8 = 7;
    /// Bytes that depend on a reply were sent with the command itself.
    pub const BYTES_BEFORE_REPLY: u8 = 8;
    /// The flow was reset by the inspector earlier.
    pub const FLOW_RESET: u8 = 9;
    /// A BDAT command was masked: its chunk must not reach the server.
    pub const BDAT_MASKED: u8 = 10;
    /// A command line longer than 512 bytes (the command-line limit).
    pub const COMMAND_LINE_TOO_LONG: u8 = 11;
    /// A limit's drop-connection action dropped the flow.
    pub const FLOW_DROPPED: u8 = 12;
    /// More than 100 RCPT commands in one transaction (the RCPT limit).
    pub const TOO_MANY_RCPTS: u8 = 13;
    /// Spoofed: the route back to the claimed sender leaves through another
    /// interface than the one the packet came in on.
    pub const WRONG_INTERFACE: u8 = 14;
    /// Spoofed: the packet's source MAC is not the next hop the kernel's
    /// neighbour table gives for the claimed sender (one interface, two sides).
    pub const WRONG_MAC: u8 = 15;
    /// Spoofed: the kernel has no neighbour entry for the claimed sender, so
    /// its side cannot be told.
    pub const NO_NEIGHBOUR: u8 = 16;
    /// Spoofed: the claimed sender is not reachable through this host (a
    /// local address, unroutable, or blackholed).
    pub const NOT_ROUTED: u8 = 17;
    /// Spoofed: on a host that does not forward, the packet belongs to no
    /// connection of this host.
    pub const NO_SOCKET: u8 = 18;
    /// Refused: the flow table is full.
    pub const TABLE_FULL: u8 = 19;
    /// Refused: the client address has its maximum of flows.
    pub const CLIENT_CAP: u8 = 20;
    /// A MAIL/RCPT address longer than 320 bytes (the address-length limit).
    pub const ADDRESS_TOO_LONG: u8 = 21;
    /// A MAIL/RCPT argument with a character no address has (the
    /// address-characters limit).
    pub const ADDRESS_CHARS: u8 = 22;
    /// A header line longer than 998 bytes (the header-line limit).
    pub const HEADER_LINE_TOO_LONG: u8 = 23;
    /// A segment larger than the inspector parses (a BIG TCP packet over
    /// 64 KiB).
    pub const TOO_LARGE: u8 = 24;
    /// The reassembly fallback dropped a segment it held: its flow's limit,
    /// the total limit, held too long, its flow gone (`fallback::DropReason`
    /// in that order).
    pub const FALLBACK_FLOW_LIMIT: u8 = 25;
    pub const FALLBACK_TOTAL_LIMIT: u8 = 26;
    pub const FALLBACK_TIMEOUT: u8 = 27;
    pub const FALLBACK_FLOW_GONE: u8 = 28;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub flow: FlowKey,
    pub kind: u8,
    pub reason: u8,
    /// Counter slot of the verb.
    pub verb_id: u8,
    /// 1 if only counted (monitor mode), nothing changed.
    pub monitor: u8,
    /// The verb's first bytes, upper-cased, NUL-padded (printable subset).
    pub verb: [u8; 8],
    /// Sequence number of the segment.
    pub seq: u32,
}
