//! Reading the counters from the pinned maps, from any process.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, PerCpuArray};
use inspector_common::{
    config::VERB_COUNTERS_MAP,
    counters::{Counter, COUNTERS_MAP},
    flow::{Flow, FlowKey, DIR_FIN, DIR_RST, FLOWS_MAP},
    verbs::{verb_name, VERB_SLOTS},
};

/// One counter, summed over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterValue {
    pub name: &'static str,
    pub value: u64,
}

/// Reads every global counter from the map pinned under `pin_dir`.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<CounterValue>> {
    let data = crate::pin::open_map(pin_dir, COUNTERS_MAP, "counters")?;
    read_map(Map::PerCpuArray(data))
}

/// Reads every global counter from an open counter map.
pub fn read_map(map: Map) -> Result<Vec<CounterValue>> {
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).context("counter map has an unexpected type")?;
    Counter::ALL
        .iter()
        .map(|c| {
            let per_cpu = arr
                .get(&(*c as u32), 0)
                .with_context(|| format!("reading counter {}", c.name()))?;
            Ok(CounterValue {
                name: c.name(),
                value: per_cpu.iter().sum(),
            })
        })
        .collect()
}

/// The counters as one JSON object: `{"packets_seen": n, ...}`.
pub fn to_json(values: &[CounterValue]) -> serde_json::Value {
    let map = values
        .iter()
        .map(|v| (v.name.to_string(), serde_json::Value::from(v.value)))
        .collect();
    serde_json::Value::Object(map)
}

/// A human table, one counter a line with its meaning.
pub fn to_table(values: &[CounterValue]) -> String {
    let mut out = String::new();
    for v in values {
        let help = Counter::ALL
            .iter()
            .find(|c| c.name() == v.name)
            .map(|c| c.help().trim())
            .unwrap_or("");
        out.push_str(&format!("{:<20} {:>14}  {}\n", v.name, v.value, help));
    }
    out
}

/// Seen and masked commands of one verb slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbValue {
    pub verb: &'static str,
    pub seen: u64,
    pub masked: u64,
}

/// Reads the per-verb counters pinned under `pin_dir`.
pub fn read_verbs_pinned(pin_dir: &Path) -> Result<Vec<VerbValue>> {
    let data = crate::pin::open_map(pin_dir, VERB_COUNTERS_MAP, "verb counters")?;
    read_verbs(Map::PerCpuArray(data))
}

/// Reads the per-verb counters from an open map.
pub fn read_verbs(map: Map) -> Result<Vec<VerbValue>> {
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).context("verb counter map has an unexpected type")?;
    let sum = |slot: u32| -> Result<u64> {
        Ok(arr
            .get(&slot, 0)
            .with_context(|| format!("reading verb counter {slot}"))?
            .iter()
            .sum())
    };
    (0..VERB_SLOTS)
        .map(|id| {
            Ok(VerbValue {
                verb: verb_name(id as u8),
                seen: sum(id * 2)?,
                masked: sum(id * 2 + 1)?,
            })
        })
        .collect()
}

/// Entries in the pinned flow table: `(tracked, active)`, where active
/// ones have seen neither FIN nor RST (closed ones wait for expiry).
pub fn count_flows_pinned(pin_dir: &Path) -> Result<(u64, u64)> {
    let data = crate::pin::open_map(pin_dir, FLOWS_MAP, "flow table")?;
    let map: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(Map::HashMap(data))
            .context("flow table has an unexpected type")?;
    let (mut tracked, mut active) = (0, 0);
    for (_, f) in map.iter().filter_map(|r| r.ok()) {
        tracked += 1;
        if (f.client.cur.flags | f.server.cur.flags) & (DIR_FIN | DIR_RST) == 0 {
            active += 1;
        }
    }
    Ok((tracked, active))
}

/// Version of the JSON objects `stats`, `status` and `events` print (the
/// `version` key; docs/json.md): raised when a key changes meaning or goes
/// away, not when one is added.
pub const JSON_VERSION: u64 = 1;

/// Everything `inspector stats` shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub counters: Vec<CounterValue>,
    pub verbs: Vec<VerbValue>,
    /// Entries in the flow table.
    pub flows_tracked: u64,
    /// Entries of flows that saw neither FIN nor RST.
    pub flows_active: u64,
}

impl Snapshot {
    pub fn read_pinned(pin_dir: &Path) -> Result<Self> {
        // The counters first: their error says what to do when nothing runs.
        let counters = read_pinned(pin_dir)?;
        let (flows_tracked, flows_active) = count_flows_pinned(pin_dir)?;
        Ok(Self {
            counters,
            verbs: read_verbs_pinned(pin_dir)?,
            flows_tracked,
            flows_active,
        })
    }

    /// Created entries neither tracked nor expired. The flow table no
    /// longer evicts (docs/contract.md §6): this only counts closed entries
    /// that a new handshake of the same addresses and ports replaced.
    pub fn flows_evicted(&self) -> u64 {
        self.get("flows_created")
            .saturating_sub(self.flows_tracked)
            .saturating_sub(self.get("flows_expired"))
            .saturating_sub(self.get("flows_reclaimed"))
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
            .unwrap_or(0)
    }

    /// One JSON object: every counter by name, `flows_active`, and
    /// `verbs: {"VERB": {"seen": n, "masked": n}}` for verbs seen at least once.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = match to_json(&self.counters) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("to_json returns an object"),
        };
        obj.insert("version".into(), JSON_VERSION.into());
        obj.insert("flows_tracked".into(), self.flows_tracked.into());
        obj.insert("flows_active".into(), self.flows_active.into());
        obj.insert("flows_evicted".into(), self.flows_evicted().into());
        let verbs = self
            .verbs
            .iter()
            .filter(|v| v.seen + v.masked > 0)
            .map(|v| {
                (
                    v.verb.to_string(),
                    serde_json::json!({"seen": v.seen, "masked": v.masked}),
                )
            })
            .collect();
        obj.insert("verbs".into(), serde_json::Value::Object(verbs));
        serde_json::Value::Object(obj)
    }

    pub fn to_table(&self) -> String {
        let mut out = to_table(&self.counters);
        for (name, v, help) in [
            (
                "flows_tracked",
                self.flows_tracked,
                "Entries in the flow table now.",
            ),
            (
                "flows_active",
                self.flows_active,
                "Of those, flows that saw neither FIN nor RST.",
            ),
            (
                "flows_evicted",
                self.flows_evicted(),
                "Entries the LRU evicted under pressure (created - tracked - expired).",
            ),
        ] {
            out.push_str(&format!("{name:<20} {v:>14}  {help}\n"));
        }
        let seen: Vec<_> = self
            .verbs
            .iter()
            .filter(|v| v.seen + v.masked > 0)
            .collect();
        if !seen.is_empty() {
            out.push_str(&format!(
                "\n{:<12} {:>12} {:>12}\n",
                "verb", "seen", "masked"
            ));
            for v in seen {
                out.push_str(&format!("{:<12} {:>12} {:>12}\n", v.verb, v.seen, v.masked));
            }
        }
        out
    }
}
