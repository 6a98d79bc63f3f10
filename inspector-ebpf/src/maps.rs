//! Map definitions and small helpers around them. `inspector attach` pins
//! every map under its pin dir, where `inspector stats` and the other
//! subcommands find them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use inspector_common::{
    config::Config,
    counters::{Counter, COUNTER_COUNT},
    events::EVENTS_BYTES,
    flow::{Flow, FlowKey, DEFAULT_MAX_FLOWS},
    policy::POLICY_ENTRIES,
    ports::{port_slot, PORT_WORDS},
    verbs::{PolicyEntry, VerbKey, VERB_SLOTS},
};

use crate::scratch::Scratch;

/// Global counters, one `u64` per CPU per [`Counter`].
#[map(name = "INSPECTOR_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Per-verb counters: slot `2 * verb_id` seen, `2 * verb_id + 1` masked.
#[map(name = "INSPECTOR_VERBS")]
static VERB_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERB_SLOTS * 2, 0);

/// Bitmap of inspected server ports (see `inspector_common::ports`).
#[map(name = "INSPECTOR_PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// The verb policy (see `inspector_common::policy`).
#[map(name = "INSPECTOR_POLICY")]
pub static POLICY: HashMap<VerbKey, PolicyEntry> = HashMap::with_max_entries(POLICY_ENTRIES, 0);

/// Flow table. LRU: under pressure the least recently used flow is evicted,
/// and its later packets count as midstream (passed or dropped by config).
#[map(name = "INSPECTOR_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Run-time configuration (one entry).
#[map(name = "INSPECTOR_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Masked-command and drop events for `inspector events`.
#[map(name = "INSPECTOR_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Per-CPU work area: the payload copy and the parser context, too big for
/// the 512-byte BPF stack.
#[map(name = "INSPECTOR_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count_n(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // This CPU's own slot: no other writer, no atomic needed.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    count_n(c, 1)
}

#[inline(always)]
pub fn count_verb(verb_id: u8, masked: bool) {
    let slot = (verb_id as u32) * 2 + masked as u32;
    if let Some(p) = VERB_COUNTERS.get_ptr_mut(slot) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn port_inspected(port: u16) -> bool {
    let (word, bit) = port_slot(port);
    match PORTS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

#[inline(always)]
pub fn config() -> u32 {
    match CONFIG.get(0) {
        Some(c) => c.flags,
        None => 0,
    }
}
