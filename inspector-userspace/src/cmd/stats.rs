//! `inspector stats`: the counters of a running `attach`, once or
//! refreshed (`--watch`).
//!
//! `--watch` redraws the screen only when stdout is a terminal; into a
//! pipe or a file it appends plain blocks (text) or one JSON object a line
//! (`--json`), so that `--watch 1 > log` and `--watch 1 --json | jq` work.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use inspector_userspace::{
    privilege,
    settings::Refused,
    stats::{Snapshot, JSON_VERSION},
};

use crate::{cli::StatsArgs, out};

/// The shortest `--watch` interval: reading every map more often than this
/// costs more than it shows.
const MIN_WATCH_SECS: f64 = 0.1;

pub fn run(args: StatsArgs) -> Result<()> {
    if let Some(secs) = args.watch {
        check_watch(secs)?;
    }
    privilege::require_bpf("stats")?;
    match args.watch {
        Some(secs) => watch_loop(secs, args.json, &args.pin_dir),
        None => print_once(args.json, &args.pin_dir),
    }
}

fn check_watch(secs: f64) -> Result<()> {
    if !(secs.is_finite() && secs >= MIN_WATCH_SECS) {
        return Err(Refused(format!(
            "--watch needs an interval of at least {MIN_WATCH_SECS} seconds"
        ))
        .into());
    }
    Ok(())
}

fn print_once(json: bool, pin_dir: &Path) -> Result<()> {
    let snap = Snapshot::read_pinned(pin_dir)?;
    if json {
        out::line(snap.to_json())?;
    } else {
        out::print(&snap.to_table())?;
    }
    Ok(())
}

/// How one refresh is shown.
#[derive(Clone, Copy)]
enum Shape {
    /// Clear the terminal and draw the table, like watch(1).
    Screen,
    /// Append a block: a title line with the time, the table, a blank line.
    Blocks,
    /// One JSON object per line.
    Json,
}

/// Prints the counters with per-second rates every `secs`, until killed
/// or until the reader of stdout goes away.
fn watch_loop(secs: f64, json: bool, pin_dir: &Path) -> Result<()> {
    let shape = match (json, out::stdout_is_terminal()) {
        (true, _) => Shape::Json,
        (false, true) => Shape::Screen,
        (false, false) => Shape::Blocks,
    };
    let every = Duration::from_secs_f64(secs);
    let mut prev = Snapshot::read_pinned(pin_dir)?;
    let mut prev_t = Instant::now();
    loop {
        std::thread::sleep(every);
        let now = Snapshot::read_pinned(pin_dir)?;
        let dt = prev_t.elapsed().as_secs_f64();
        prev_t = Instant::now();
        let wall = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        match shape {
            Shape::Json => out::line(rates_json(&prev, &now, dt, &wall))?,
            Shape::Screen => {
                // Clear the screen and go home, like watch(1).
                let title = format!(
                    "inspector stats, every {secs} s ({})  Ctrl-C to stop",
                    pin_dir.display()
                );
                out::print(&format!(
                    "\x1b[2J\x1b[H{title}\n\n{}",
                    rates_table(&prev, &now, dt)
                ))?
            }
            Shape::Blocks => out::print(&format!(
                "inspector stats at {wall}, every {secs} s ({})\n{}\n",
                pin_dir.display(),
                rates_table(&prev, &now, dt)
            ))?,
        }
        prev = now;
    }
}

fn rates_table(prev: &Snapshot, now: &Snapshot, dt: f64) -> String {
    let mut o = format!("{:<22} {:>14} {:>12}\n", "counter", "total", "per second");
    for c in &now.counters {
        let rate = c.value.saturating_sub(prev.get(c.name)) as f64 / dt;
        o.push_str(&format!("{:<22} {:>14} {:>12.1}\n", c.name, c.value, rate));
    }
    o.push_str(&format!(
        "{:<22} {:>14}\n{:<22} {:>14}\n{:<22} {:>14}\n",
        "flows_tracked",
        now.flows_tracked,
        "flows_active",
        now.flows_active,
        "flows_evicted",
        now.flows_evicted()
    ));
    o
}

/// `stats --json` of `now`, with `time`, `interval_s` and
/// `rates: {"counter": per second}`.
fn rates_json(prev: &Snapshot, now: &Snapshot, dt: f64, wall: &str) -> serde_json::Value {
    let mut v = now.to_json();
    let rates: serde_json::Map<String, serde_json::Value> = now
        .counters
        .iter()
        .map(|c| {
            let rate = c.value.saturating_sub(prev.get(c.name)) as f64 / dt;
            (c.name.to_string(), serde_json::json!(rate))
        })
        .collect();
    v["version"] = JSON_VERSION.into();
    v["time"] = wall.into();
    v["interval_s"] = serde_json::json!(dt);
    v["rates"] = rates.into();
    v
}
