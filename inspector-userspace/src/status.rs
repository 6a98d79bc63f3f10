//! `inspector status`: what is attached where, with which policy, and since
//! when; read entirely from the pin dir, so it works for a daemon that is
//! running, one that died, or one stopped with --persist.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use aya::maps::{Array, Map};
use inspector_common::{
    config::{Config, CFG_FRAGMENTS_PASS, CFG_MIDSTREAM_PASS, CFG_MONITOR, CONFIG_MAP},
    fallback::{DropReason, Fallback, FALLBACK_MAP},
    ports::{port_slot, PORTS_MAP, PORT_WORDS},
};

use crate::{links, stats};

/// The pid holding the flock on `path`, from /proc/locks.
pub fn lock_holder(path: &Path) -> Option<u32> {
    let ino = std::fs::metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let file_ino: u64 = f.get(5)?.rsplit(':').next()?.parse().ok()?;
        if file_ino == ino {
            f.get(4)?.parse().ok()
        } else {
            None
        }
    })
}

pub struct Status {
    pub pin_dir: String,
    pub daemon_pid: Option<u32>,
    pub hooks: Vec<(String, String, u32)>,
    pub since: Option<SystemTime>,
    pub ports: Vec<u16>,
    pub allowed: Vec<String>,
    pub config: Config,
    pub flows_tracked: u64,
    pub flows_active: u64,
    /// The reassembly fallback as the kernel sees it (`None`: a pin dir of
    /// a version without it).
    pub fallback: Option<Fallback>,
}

/// The reassembly fallback's state: `active` (the kernel diverts to it),
/// `stale` (its daemon stopped beating: the kernel drops instead), `off`.
pub fn fallback_state(f: &Fallback, now_ns: u64) -> &'static str {
    if f.ifindex == 0 {
        "off"
    } else if f.target(now_ns).is_some() {
        "active"
    } else {
        "stale"
    }
}

/// The name of interface `index`, if it still exists.
fn ifname(index: u32) -> Option<String> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .ok()?;
    rustix::net::netdevice::index_to_name(&sock, index).ok()
}

impl Status {
    pub fn read(pin_dir: &Path, allowed: Vec<String>) -> Result<Self> {
        let mut hooks = Vec::new();
        let mut since: Option<SystemTime> = None;
        for e in links::pinned(pin_dir)? {
            let id = links::program_id(&e.path)?;
            if let Ok(t) = std::fs::metadata(&e.path).and_then(|m| m.modified()) {
                since = Some(since.map_or(t, |s| s.min(t)));
            }
            hooks.push((e.iface, e.hook.name().to_string(), id));
        }
        let open = |name: &str| crate::pin::open_map(pin_dir, name, "map");
        let cfg: Array<_, Config> = Array::try_from(Map::Array(open(CONFIG_MAP)?))?;
        let config = cfg.get(&0, 0)?;
        let ports_map: Array<_, u64> = Array::try_from(Map::Array(open(PORTS_MAP)?))?;
        let mut words = vec![0u64; PORT_WORDS as usize];
        for (i, w) in words.iter_mut().enumerate() {
            *w = ports_map.get(&(i as u32), 0)?;
        }
        let ports = (0..=u16::MAX)
            .filter(|p| {
                let (w, b) = port_slot(*p);
                words[w as usize] & b != 0
            })
            .collect();
        let (flows_tracked, flows_active) = stats::count_flows_pinned(pin_dir)?;
        let fallback = open(FALLBACK_MAP)
            .ok()
            .and_then(|m| Array::<_, Fallback>::try_from(Map::Array(m)).ok())
            .and_then(|a| a.get(&0, 0).ok());
        Ok(Status {
            pin_dir: pin_dir.display().to_string(),
            daemon_pid: lock_holder(pin_dir),
            hooks,
            since,
            ports,
            allowed,
            config,
            flows_tracked,
            flows_active,
            fallback,
        })
    }

    fn uptime(&self) -> Option<Duration> {
        self.since
            .and_then(|s| SystemTime::now().duration_since(s).ok())
    }

    fn flag(&self, f: u32) -> bool {
        self.config.flags & f != 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": crate::stats::JSON_VERSION,
            "pin_dir": self.pin_dir,
            "daemon_pid": self.daemon_pid,
            "attached": self.hooks.iter().map(|(i, h, id)| serde_json::json!({
                "interface": i, "hook": h, "program_id": id
            })).collect::<Vec<_>>(),
            "uptime_secs": self.uptime().map(|d| d.as_secs()),
            "ports": self.ports,
            "allowed": self.allowed,
            "monitor": self.flag(CFG_MONITOR),
            "midstream": if self.flag(CFG_MIDSTREAM_PASS) { "pass" } else { "drop" },
            "fragments": if self.flag(CFG_FRAGMENTS_PASS) { "pass" } else { "drop" },
            "flows_tracked": self.flows_tracked,
            "flows_active": self.flows_active,
            "fallback": self.fallback.map(|f| serde_json::json!({
                "state": fallback_state(&f, crate::flows::monotonic_ns()),
                "tap": if f.ifindex != 0 { ifname(f.ifindex) } else { None },
                "held_segments": f.held_segments,
                "held_bytes": f.held_bytes,
                "peak_flow_bytes": f.peak_flow_bytes,
                "peak_total_bytes": f.peak_total_bytes,
                "dropped": DropReason::ALL
                    .iter()
                    .map(|r| (r.name().to_string(), f.dropped[*r as usize].into()))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
            })),
        })
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        o.push_str(&format!("pin dir:    {}\n", self.pin_dir));
        o.push_str(&match self.daemon_pid {
            Some(pid) => format!("daemon:     running (pid {pid})\n"),
            None => "daemon:     not running (the kernel side runs on its own)\n".to_string(),
        });
        if self.hooks.is_empty() {
            o.push_str("attached:   nowhere\n");
        }
        for (i, h, id) in &self.hooks {
            o.push_str(&format!("attached:   {i:<16} {h:<11} program id {id}\n"));
        }
        if let Some(u) = self.uptime() {
            o.push_str(&format!(
                "uptime:     {}\n",
                humantime::format_duration(Duration::from_secs(u.as_secs()))
            ));
        }
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        o.push_str(&format!("ports:      {}\n", ports.join(" ")));
        o.push_str(&format!("allowed:    {}\n", self.allowed.join(" ")));
        o.push_str(&format!(
            "mode:       {}; midstream {}; fragments {}\n",
            if self.flag(CFG_MONITOR) {
                "monitor (nothing is changed)"
            } else {
                "enforcing"
            },
            if self.flag(CFG_MIDSTREAM_PASS) {
                "pass"
            } else {
                "drop"
            },
            if self.flag(CFG_FRAGMENTS_PASS) {
                "pass"
            } else {
                "drop"
            },
        ));
        o.push_str(&format!(
            "flows:      {} tracked, {} active\n",
            self.flows_tracked, self.flows_active
        ));
        if let Some(f) = self.fallback {
            let state = fallback_state(&f, crate::flows::monotonic_ns());
            o.push_str(&match state {
                "active" => format!(
                    "fallback:   active on tap {}: {} segments ({} bytes) held; at most {} bytes \
                     for one flow, {} in all; dropped since it started: {}\n",
                    ifname(f.ifindex).unwrap_or_else(|| f.ifindex.to_string()),
                    f.held_segments,
                    f.held_bytes,
                    f.peak_flow_bytes,
                    f.peak_total_bytes,
                    DropReason::ALL
                        .iter()
                        .map(|r| format!("{} {}", f.dropped[*r as usize], r.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "stale" => {
                    "fallback:   stale (its daemon stopped): out-of-order segments are dropped\n"
                        .to_string()
                }
                _ => "fallback:   off: out-of-order segments are dropped\n".to_string(),
            });
        }
        o
    }
}
