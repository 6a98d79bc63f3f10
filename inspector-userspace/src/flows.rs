//! Expiry of flow-table entries. The kernel never deletes an entry on FIN
//! or RST (a forged or rejected one must not end inspection of a live
//! flow); `inspector attach` removes entries some time after the flow
//! closed, or after it was idle for long, then recounts the flows of each
//! client address for the kernel's per-client cap (docs/contract.md §6).
//! Nothing else makes room: a full table refuses new flows.

use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use inspector_common::{
    counters::Counter,
    flow::{reclaimable, Flow, FlowKey, CLOSED_GRACE_SECS, DIR_FIN, DIR_RST, IDLE_TIMEOUT_SECS},
};

/// How long a closed flow's entry stays (see `CLOSED_GRACE_SECS`).
pub const CLOSED_GRACE: Duration = Duration::from_secs(CLOSED_GRACE_SECS);
/// How long an idle flow's entry stays (see `IDLE_TIMEOUT_SECS`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(IDLE_TIMEOUT_SECS);

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns and, at
/// the tick's resolution, of bpf_ktime_get_coarse_ns (the flow timestamps).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether an entry should go, at time `now` (ns): the kernel's own rule.
pub fn expired(flow: &Flow, now: u64) -> bool {
    reclaimable(flow, now)
}

/// Removes expired entries and adds their number to the `flows_expired`
/// counter. Returns how many were removed.
pub fn expire<F, C>(
    flows: &mut HashMap<F, FlowKey, Flow>,
    counters: &mut PerCpuArray<C, u64>,
) -> Result<u64>
where
    F: std::borrow::BorrowMut<MapData>,
    C: std::borrow::BorrowMut<MapData>,
{
    expire_at(flows, counters, monotonic_ns())
}

/// [`expire`] at time `now`.
fn expire_at<F, C>(
    flows: &mut HashMap<F, FlowKey, Flow>,
    counters: &mut PerCpuArray<C, u64>,
    now: u64,
) -> Result<u64>
where
    F: std::borrow::BorrowMut<MapData>,
    C: std::borrow::BorrowMut<MapData>,
{
    let stale: Vec<FlowKey> = flows
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(_, f)| expired(f, now))
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in &stale {
        // Gone already (removed concurrently) is fine.
        if flows.remove(k).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        let idx = Counter::FlowsExpired as u32;
        let mut values: Vec<u64> = counters.get(&idx, 0)?.iter().copied().collect();
        // Only this process writes this slot; the kernel never does.
        values[0] += removed;
        counters
            .set(idx, PerCpuValues::try_from(values)?, 0)
            .context("updating flows_expired")?;
    }
    Ok(removed)
}

/// Sets the per-client counts of live flows to what the table holds. The
/// kernel adds one when it admits a flow and takes one off when the flow
/// closes, without atomics (the BPF target has none in Rust's core), so two
/// CPUs can lose an update; this pass corrects any drift every
/// `EXPIRY_PERIOD`. A flow admitted or closed between the table's read and
/// the write of its client's count is off by one until the next pass.
pub fn recount<F, K>(
    flows: &HashMap<F, FlowKey, Flow>,
    clients: &mut HashMap<K, [u8; 16], u64>,
) -> Result<()>
where
    F: std::borrow::Borrow<MapData>,
    K: std::borrow::BorrowMut<MapData>,
{
    let mut counts: std::collections::HashMap<[u8; 16], u64> = std::collections::HashMap::new();
    // Closed flows wait for expiry in the table but no longer count.
    for (k, f) in flows.iter().filter_map(|r| r.ok()) {
        if (f.client.cur.flags | f.server.cur.flags) & (DIR_FIN | DIR_RST) == 0 {
            *counts.entry(k.client).or_default() += 1;
        }
    }
    let known: Vec<([u8; 16], u64)> = clients.iter().filter_map(|r| r.ok()).collect();
    for (client, old) in known {
        match counts.remove(&client) {
            Some(n) if n == old => {}
            Some(n) => clients
                .insert(client, n, 0)
                .context("updating a client's flow count")?,
            None => {
                let _ = clients.remove(&client);
            }
        }
    }
    // Flows admitted since the kernel counted them are counted already; a
    // client missing here was added after `known` was read: the kernel's
    // own count stands.
    Ok(())
}

/// The pinned flow table.
pub type FlowMap = HashMap<MapData, FlowKey, Flow>;
/// The pinned per-client flow counts.
pub type ClientMap = HashMap<MapData, [u8; 16], u64>;
/// The pinned global counter map.
pub type CounterMap = PerCpuArray<MapData, u64>;

/// Opens the pinned flow table, per-client counts and counter map, for
/// [`expire`] and [`recount`].
pub fn open_pinned(pin_dir: &std::path::Path) -> Result<(FlowMap, ClientMap, CounterMap)> {
    use aya::maps::Map;
    use inspector_common::flow::{CLIENT_FLOWS_MAP, FLOWS_MAP};
    let open = |name: &str| crate::pin::open_map(pin_dir, name, "map");
    let flows = HashMap::try_from(Map::HashMap(open(FLOWS_MAP)?))?;
    let clients = HashMap::try_from(Map::HashMap(open(CLIENT_FLOWS_MAP)?))?;
    let counters = PerCpuArray::try_from(Map::PerCpuArray(open(
        inspector_common::counters::COUNTERS_MAP,
    )?))?;
    Ok((flows, clients, counters))
}
