//! Global per-CPU counters.
//!
//! The kernel side keeps one `u64` per counter per CPU in a
//! `BPF_MAP_TYPE_PERCPU_ARRAY` indexed by [`Counter`]; userspace sums the CPUs.
//! Per-CPU slots need no atomics: an XDP or TC program runs to completion on
//! one CPU with migration disabled, and no other program writes that CPU's slot.

/// Name of the pinned per-CPU counter map.
pub const COUNTERS_MAP: &str = "INSPECTOR_COUNTERS";

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Index of one counter in the counter map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Every counter, in map-index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The stable name used by `inspector stats` and its JSON output.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// One-line explanation shown by `inspector stats --help`.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($doc),*),)*
                }
            }
        }
    };
}

counters! {
    /// Packets the program saw, whatever they were.
    PacketsSeen => "packets_seen",
    /// TCP packets of inspected flows (a port of the inspected set on either side).
    PacketsInspected => "packets_inspected",
    /// TCP payload bytes of inspected flows.
    BytesInspected => "bytes_inspected",
    /// Command lines whose verb was parsed.
    CommandsSeen => "commands_seen",
    /// Commands whose verb was masked (or would have been, in monitor mode).
    CommandsMasked => "commands_masked",
    /// Payload bytes replaced by `X` (in monitor mode: that would have been).
    BytesMasked => "bytes_masked",
    /// Flows whose handshake was seen complete and that got a table entry.
    FlowsCreated => "flows_created",
    /// New flows refused: the flow table was full, or the client address had its maximum of flows (its SYN dropped, or its handshake's last ACK turned into a RST to the server).
    FlowsRefused => "flows_refused",
    /// Flows that ended with FIN or RST.
    FlowsClosed => "flows_closed",
    /// Flow entries removed by `inspector attach` after close or idle timeout (written by userspace).
    FlowsExpired => "flows_expired",
    /// Entries of closed or idle flows the kernel removed to make room in a full table (while the daemon was not there to expire them).
    FlowsReclaimed => "flows_reclaimed",
    /// Payload packets of flows whose start was not seen (dropped, or passed with --midstream pass).
    Midstream => "midstream",
    /// Packets of the server's direction that did not come from the server's side (dropped, no flow state changed).
    Spoofed => "spoofed",
    /// Segments starting beyond the next expected byte, dropped so the sender retransmits in order.
    OutOfOrderDrops => "out_of_order_drops",
    /// Retransmissions re-inspected from the checkpoint and masked as the original was.
    RetransReinspected => "retrans_reinspected",
    /// Retransmissions of bytes the receiver already acknowledged (passed: it discards them).
    RetransAcked => "retrans_acked",
    /// Retransmissions whose bytes conflict with what was inspected (dropped).
    RetransConflicts => "retrans_conflicts",
    /// Retransmissions that could not be re-inspected from the checkpoint (dropped).
    RetransUnverifiable => "retrans_unverifiable",
    /// Client segments sent before the reply they depend on (DATA, AUTH, STARTTLS), dropped until it arrives.
    AwaitingReplyDrops => "awaiting_reply_drops",
    /// Flows reset because they could not be normalised: a command whose reply decides how the next bytes are read (DATA, AUTH, STARTTLS) sent together with those bytes (the segment becomes a RST to the server).
    FlowsReset => "flows_reset",
    /// Segments with more masked verbs than one packet can carry (dropped).
    MaskOverflowDrops => "mask_overflow_drops",
    /// Message bodies (DATA accepted with 354).
    Bodies => "bodies",
    /// BDAT chunks passed uninspected.
    BdatChunks => "bdat_chunks",
    /// SASL exchanges (AUTH answered with 334).
    SaslExchanges => "sasl_exchanges",
    /// Flows that went opaque after STARTTLS was allowed and accepted.
    StarttlsSessions => "starttls_sessions",
    /// IP fragments of possibly inspected flows (dropped unless fragments are passed).
    Fragments => "fragments",
    /// Frames whose headers were truncated or inconsistent (passed untouched).
    Malformed => "malformed",
    /// Masked packets whose TCP checksum was only a pseudo-header sum (offloaded).
    ChecksumPartial => "checksum_partial",
    /// Segments dropped by the inspector, for any of the reasons above.
    Dropped => "dropped",
    /// Keywords masked in the server's replies to EHLO, because the policy denies their command (CHUNKING for BDAT, STARTTLS...).
    EhloKeywordsMasked => "ehlo_keywords_masked",
    /// Flows reset because a BDAT command was masked: its chunk would have reached the server as commands (also counted in flows_reset).
    BdatResets => "bdat_resets",
    /// Server greetings (220 banners) whose text was masked (banner masking is an option).
    BannersMasked => "banners_masked",
    /// Command lines longer than 512 bytes (the command-line limit matched, whatever its action).
    LimitCommandLine => "limit_command_line",
    /// RCPT commands after the 100th of a transaction (the RCPT limit matched, whatever its action).
    LimitRcpts => "limit_rcpts",
    /// Segments dropped because a limit's drop-connection action dropped their flow.
    FlowsDropped => "flows_dropped",
    /// MAIL/RCPT addresses longer than 320 bytes (the address-length limit matched, whatever its action).
    LimitAddressLength => "limit_address_length",
    /// MAIL/RCPT arguments with a character no address has: |, backquote, NUL, unbalanced <> (the address-characters limit matched, whatever its action).
    LimitAddressChars => "limit_address_chars",
    /// Header lines longer than 998 bytes in a message's header section (the header-line limit matched, whatever its action).
    LimitHeaderLine => "limit_header_line",
    /// Client segments that started beyond the next expected byte, handed to the reassembly fallback of `inspector attach` instead of being dropped.
    Diverted => "diverted",
    /// Segments the reassembly fallback wrote back in order, inspected and passed.
    Reassembled => "reassembled",
    /// Segments the reassembly fallback held and then dropped: held too long, or past its memory limits (written by userspace).
    FallbackDrops => "fallback_drops",
}

/// Number of counters (size of the counter map).
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
            assert!(!c.help().is_empty());
        }
    }
}
