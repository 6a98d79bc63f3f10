//! Run-time configuration read by the kernel programs, in a one-entry array
//! map that userspace rewrites when the operator changes it.

/// Name of the pinned configuration map.
pub const CONFIG_MAP: &str = "INSPECTOR_CONFIG";

/// Pass payload packets of flows whose start was not seen, uninspected
/// (default: drop them, docs/contract.md §6). A new bit, not the old
/// `CFG_MIDSTREAM_DROP` (1) inverted: a configuration written by an older
/// `inspector` reads as the safe default.
pub const CFG_MIDSTREAM_PASS: u32 = 32;
/// Pass IP fragments of possibly inspected flows (default: drop).
pub const CFG_FRAGMENTS_PASS: u32 = 2;
/// Monitor only: count and report, never modify or drop.
pub const CFG_MONITOR: u32 = 4;
/// Mask the text of the server's 220 greeting (docs/contract.md §10).
pub const CFG_MASK_BANNER: u32 = 8;
/// Do not filter the server's replies to EHLO (docs/contract.md §10; on
/// by default).
pub const CFG_NO_EHLO_FILTER: u32 = 16;
/// From bit 8 on, three bits per limit rule (`smtp::rule`, from 1): its
/// action, one of [`action`]. Rule 1 (command line) sits in bits 8-10,
/// rule 2 (RCPT count) in 11-13, rule 3 (address length) in 14-16, rule 4
/// (address characters) in 17-19, rule 5 (header line) in 20-22. The
/// `CFG_*` switches above stay below bit 8 ([`CFG_SWITCHES`]; a unit test
/// checks that nothing overlaps).
pub const CFG_LIMITS_SHIFT: u32 = 8;

/// Every switch bit of the configuration word (all below
/// [`CFG_LIMITS_SHIFT`]).
pub const CFG_SWITCHES: u32 =
    CFG_MIDSTREAM_PASS | CFG_FRAGMENTS_PASS | CFG_MONITOR | CFG_MASK_BANNER | CFG_NO_EHLO_FILTER;

// The switches stay below the limit fields.
const _: () = assert!(CFG_SWITCHES < 1 << CFG_LIMITS_SHIFT);

/// Bits of one rule's action.
pub const LIMIT_BITS: u32 = 3;

/// What a limit does when a session goes past it (docs/contract.md §10).
/// A word whose limit bits are all zero (one written by a test, or by an
/// `inspector` from before the limits) means `log` for every rule;
/// `inspector attach` writes its defaults (`drop-connection`) explicitly.
pub mod action {
    /// Count and report, change nothing.
    pub const LOG: u32 = 0;
    /// Reset the flow both ways.
    pub const RESET: u32 = 1;
    /// Drop this and every later segment of the flow, both ways.
    pub const DROP_CONNECTION: u32 = 2;
    /// The rule is off: not even counted.
    pub const OFF: u32 = 3;
    /// Make the offending command unrecognisable to the server: its verb
    /// is masked with `X` if any byte of it is in the segment being
    /// parsed; if all of it already left in earlier segments, the flow is
    /// reset instead (fail closed). Rules on a whole line (command line,
    /// header line) cannot mask: `inspector` refuses it, and the parser
    /// resets if a configuration word asks for it anyway.
    pub const MASK: u32 = 4;
}

/// Where the action of limit `rule` (from 1) sits in a configuration word.
#[inline(always)]
pub const fn limit_shift(rule: u8) -> u32 {
    CFG_LIMITS_SHIFT + LIMIT_BITS * ((rule as u32).wrapping_sub(1) & 7)
}

/// The action of limit `rule` in a configuration word.
#[inline(always)]
pub const fn limit_action(flags: u32, rule: u8) -> u32 {
    (flags >> limit_shift(rule)) & ((1 << LIMIT_BITS) - 1)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CFG_*` bits.
    pub flags: u32,
    /// Flows one client address may have in the table; 0 means
    /// `flow::DEFAULT_MAX_FLOWS_PER_CLIENT`.
    pub max_flows_per_client: u32,
}

/// Name of the per-verb counter map: `VERB_SLOTS * 2` per-CPU `u64`s, slot
/// `2 * id` counts commands seen with that verb, `2 * id + 1` masked ones.
pub const VERB_COUNTERS_MAP: &str = "INSPECTOR_VERBS";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::rule;

    #[test]
    fn switches_and_limit_fields_do_not_overlap() {
        let mut seen = CFG_SWITCHES;
        for r in 1..=rule::COUNT {
            let field = ((1 << LIMIT_BITS) - 1) << limit_shift(r);
            assert_eq!(seen & field, 0, "rule {r}");
            seen |= field;
            for a in [
                action::LOG,
                action::RESET,
                action::DROP_CONNECTION,
                action::OFF,
                action::MASK,
            ] {
                assert_eq!(limit_action(a << limit_shift(r) | CFG_SWITCHES, r), a);
            }
        }
    }
}
