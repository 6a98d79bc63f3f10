//! Run-time configuration read by the kernel programs, in a one-entry array
//! map that userspace rewrites when the operator changes it.

/// Name of the pinned configuration map.
pub const CONFIG_MAP: &str = "INSPECTOR_CONFIG";

/// Pass payload packets of flows whose start was not seen, uninspected
/// (default: drop them, docs/contract.md §6). A new bit, not the old
/// `CFG_MIDSTREAM_DROP` (1) inverted: a configuration written by an older
/// `inspector` reads as the safe default.
pub const CFG_MIDSTREAM_PASS: u32 = 8;
/// Pass IP fragments of possibly inspected flows (default: drop).
pub const CFG_FRAGMENTS_PASS: u32 = 2;
/// Monitor only: count and report, never modify or drop.
pub const CFG_MONITOR: u32 = 4;

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
