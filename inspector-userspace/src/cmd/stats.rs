//! `inspector stats`: the counters of a running `attach`, once or
//! refreshed (`--watch`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use inspector_userspace::{privilege, stats::Snapshot};

use crate::cli::StatsArgs;

/// The shortest `--watch` interval: reading every map more often than this
/// costs more than it shows.
const MIN_WATCH_SECS: f64 = 0.1;

pub fn run(args: StatsArgs) -> Result<()> {
    if let Some(secs) = args.watch {
        check_watch(secs)?;
    }
    privilege::require_bpf("stats")?;
    match args.watch {
        Some(secs) => watch_loop(secs, &args.pin_dir),
        None => print_once(args.json, &args.pin_dir),
    }
}

fn check_watch(secs: f64) -> Result<()> {
    if !(secs.is_finite() && secs >= MIN_WATCH_SECS) {
        bail!("--watch needs an interval of at least {MIN_WATCH_SECS} seconds");
    }
    Ok(())
}

fn print_once(json: bool, pin_dir: &Path) -> Result<()> {
    let snap = Snapshot::read_pinned(pin_dir)?;
    if json {
        println!("{}", snap.to_json());
    } else {
        print!("{}", snap.to_table());
    }
    Ok(())
}

/// Redraws the counters with per-second rates every `secs`, until killed.
fn watch_loop(secs: f64, pin_dir: &Path) -> Result<()> {
    let every = Duration::from_secs_f64(secs);
    let mut prev = Snapshot::read_pinned(pin_dir)?;
    let mut prev_t = Instant::now();
    loop {
        std::thread::sleep(every);
        let now = Snapshot::read_pinned(pin_dir)?;
        let dt = prev_t.elapsed().as_secs_f64();
        prev_t = Instant::now();
        print!("{}", rates_screen(&prev, &now, dt, secs, pin_dir));
        prev = now;
    }
}

fn rates_screen(prev: &Snapshot, now: &Snapshot, dt: f64, secs: f64, pin_dir: &Path) -> String {
    // Clear the screen and go home, like watch(1).
    let mut o = String::from("\x1b[2J\x1b[H");
    o.push_str(&format!(
        "inspector stats, every {secs} s ({})  Ctrl-C to stop\n\n",
        pin_dir.display()
    ));
    o.push_str(&format!(
        "{:<22} {:>14} {:>12}\n",
        "counter", "total", "per second"
    ));
    for c in &now.counters {
        let rate = c.value.saturating_sub(prev.get(c.name)) as f64 / dt;
        o.push_str(&format!("{:<22} {:>14} {:>12.1}\n", c.name, c.value, rate));
    }
    o.push_str(&format!(
        "{:<22} {:>14}\n{:<22} {:>14}\n",
        "flows_tracked", now.flows_tracked, "flows_active", now.flows_active
    ));
    o
}
