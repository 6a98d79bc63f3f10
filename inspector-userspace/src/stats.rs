//! Reading the counters from the pinned maps, from any process.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use inspector_common::counters::{Counter, COUNTERS_MAP};

/// One counter, summed over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterValue {
    pub name: &'static str,
    pub value: u64,
}

/// Reads every global counter from the map pinned under `pin_dir`.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<CounterValue>> {
    let path = pin_dir.join(COUNTERS_MAP);
    if !path.exists() {
        anyhow::bail!(
            "no counters at {}: is `inspector attach` running with --pin-dir {}?",
            path.display(),
            pin_dir.display()
        );
    }
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
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
            .map(|c| c.help())
            .unwrap_or("");
        out.push_str(&format!("{:<20} {:>14}  {}\n", v.name, v.value, help));
    }
    out
}
