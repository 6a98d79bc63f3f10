//! The maps, and small readers of the configuration maps. `inspector attach`
//! pins every map but the work area under its pin dir, where `inspector
//! stats` and the other subcommands find them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use inspector_common::{
    config::Config,
    counters::COUNTER_COUNT,
    events::EVENTS_BYTES,
    fallback::{Fallback, Wake, WAKE_BYTES},
    flow::{
        Flow, FlowKey, Handshake, DEFAULT_MAX_FLOWS, DEFAULT_MAX_FLOWS_PER_CLIENT,
        HANDSHAKE_ENTRIES,
    },
    policy::POLICY_ENTRIES,
    ports::{port_slot, PORT_WORDS},
    verbs::{PolicyEntry, VerbKey, VERB_SLOTS},
};

use crate::workarea::{self, WorkArea};

/// Global counters, one `u64` per CPU per `Counter` (see `report.rs`).
#[map(name = "INSPECTOR_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Per-verb counters: slot `2 * verb_id` seen, `2 * verb_id + 1` masked.
#[map(name = "INSPECTOR_VERBS")]
pub static VERB_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERB_SLOTS * 2, 0);

/// Bitmap of inspected server ports (see `inspector_common::ports`).
#[map(name = "INSPECTOR_PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// The verb policy (see `inspector_common::policy`).
#[map(name = "INSPECTOR_POLICY")]
pub static POLICY: HashMap<VerbKey, PolicyEntry> = HashMap::with_max_entries(POLICY_ENTRIES, 0);

/// The policy generation (see `inspector_common::policy::POLICY_GEN_MAP`).
#[map(name = "INSPECTOR_POLICY_GEN")]
static POLICY_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Flow table (see `flow.rs`). A plain hash, not an LRU: nothing evicts an
/// inspected flow to make room; a new flow is refused when it is full.
/// `inspector attach` sets its size and expires closed and idle entries.
#[map(name = "INSPECTOR_FLOWS")]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Handshakes in progress (see `flow.rs`). An LRU: SYNs that never complete
/// only push one another out, never a flow.
#[map(name = "INSPECTOR_HANDSHAKES")]
pub static HANDSHAKES: LruHashMap<FlowKey, Handshake> =
    LruHashMap::with_max_entries(HANDSHAKE_ENTRIES, 0);

/// Flows in the table per client address (IPv4-mapped for IPv4), for the
/// per-client cap. The kernel adds; `inspector attach` recounts after each
/// expiry pass (see `inspector-userspace/src/flows.rs`). As large as the
/// flow table: there cannot be more clients than flows.
#[map(name = "INSPECTOR_CLIENT_FLOWS")]
pub static CLIENT_FLOWS: HashMap<[u8; 16], u64> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Run-time configuration (one entry).
#[map(name = "INSPECTOR_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Masked-command and drop events for `inspector events`.
#[map(name = "INSPECTOR_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The reassembly fallback's tap and heartbeat (see
/// `inspector_common::fallback`), written by `inspector attach`.
#[map(name = "INSPECTOR_FALLBACK")]
static FALLBACK: Array<Fallback> = Array::with_max_entries(1, 0);

/// Moves of the next expected byte of flows with diverted segments, for the
/// fallback daemon.
#[map(name = "INSPECTOR_FALLBACK_WAKE")]
static WAKE: RingBuf = RingBuf::with_byte_size(WAKE_BYTES, 0);

/// The per-CPU work area (see `workarea.rs`): too big for the 512-byte BPF
/// stack.
#[map(name = "INSPECTOR_WORK")]
static WORK_AREA: PerCpuArray<WorkArea> = PerCpuArray::with_max_entries(1, 0);

/// The policy generation; `None` if the map cannot be read (then no cache
/// entry outlives its segment).
#[inline(always)]
pub fn policy_gen() -> Option<u64> {
    POLICY_GEN.get(0).copied()
}

/// This CPU's work area.
#[inline(always)]
pub fn work_area() -> Option<&'static mut WorkArea> {
    let p = WORK_AREA.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry; a reference an earlier call made is not
    // used after this one (`run` lets go of its own before it calls
    // `segment::inspect`, which takes it again).
    unsafe { workarea::borrow(p) }
}

/// This CPU's policy cache (`WorkArea::pcache`), as a raw pointer taken
/// without making a reference to the work area: for a step that already
/// holds one (the server's keyword lookups, see `stream::keyword_policy`).
#[inline(always)]
pub fn pcache_ptr() -> Option<*mut workarea::PolicyCache> {
    let p = WORK_AREA.get_ptr_mut(0)?;
    // SAFETY: a field projection into this CPU's live map value; nothing
    // is read or written here.
    Some(unsafe { core::ptr::addr_of_mut!((*p).pcache) })
}

#[inline(always)]
pub fn port_inspected(port: u16) -> bool {
    let (word, bit) = port_slot(port);
    match PORTS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

/// The `CFG_*` flags of the configuration.
#[inline(always)]
pub fn config() -> u32 {
    match CONFIG.get(0) {
        Some(c) => c.flags,
        None => 0,
    }
}

/// The flows one client address may have in the table.
#[inline(always)]
pub fn max_flows_per_client() -> u64 {
    match CONFIG.get(0) {
        Some(c) if c.max_flows_per_client != 0 => c.max_flows_per_client as u64,
        _ => DEFAULT_MAX_FLOWS_PER_CLIENT as u64,
    }
}

/// The tap to divert a segment to at time `now`, if the fallback daemon is
/// there (see `inspector_common::fallback`).
#[inline(always)]
pub fn fallback_target(now: u64) -> Option<u32> {
    FALLBACK.get(0)?.target(now)
}

/// The fallback's tap (0: none), whatever the heartbeat says: a segment
/// that came in through it was written back by the daemon.
#[inline(always)]
pub fn fallback_ifindex() -> u32 {
    match FALLBACK.get(0) {
        Some(f) => f.ifindex,
        None => 0,
    }
}

/// Tells the fallback daemon that the next expected byte of the flow
/// `key`'s client (or, with `server`, server) direction is now `next_seq`.
/// A full ring loses the record; the daemon also reads the flow table when
/// it ticks.
#[inline(always)]
pub fn wake(key: &FlowKey, next_seq: u32, server: bool) {
    if let Some(mut entry) = WAKE.reserve::<Wake>(0) {
        let p = entry.as_mut_ptr();
        // SAFETY: `p` points to the reserved entry, which only this program
        // writes until it is submitted.
        unsafe {
            (*p).flow = *key;
            (*p).next_seq = next_seq;
            (*p).server = server as u32;
        }
        entry.submit(0);
    }
}
