//! End to end through the namespace gateway: Postfix `smtp-source` in the
//! client namespace, `smtp-sink` in the server namespace, and in between
//! plain forwarding or one of the filters, configuration after
//! configuration, round after round.
//!
//! Also memory (what the kernel accounts for the maps of a running
//! `inspector attach`) and scale (throughput with thousands of idle SMTP
//! flows tracked).

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use inspector_testkit::{
    client::Smtp,
    inspector::{stats_json, status_json, Attach, Inspector},
    netns::{in_netns, Held, Offloads, Testbed},
    proc::Proc,
    program,
};
use serde_json::{json, Value};

use super::{
    interrupted,
    stats::{num, quantile, Summary},
};

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub rounds: usize,
    /// Parallel smtp-source sessions.
    pub sessions: usize,
    pub small_messages: usize,
    pub small_bytes: usize,
    pub large_messages: usize,
    pub large_bytes: usize,
    /// Sequential sessions of the latency client, per configuration and round.
    pub latency_sessions: usize,
    /// Idle SMTP flows held open for the scale measurement.
    pub idle_flows: usize,
}

/// What sits in the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    None,
    /// Baselines, bench programs attached in XDP mode: one that only
    /// passes, one that parses the headers as the inspector does, one that
    /// also tracks flows in a hash table (`inspector-ebpf/src/bench.rs`).
    XdpPass,
    XdpParse,
    XdpTrack,
    InspectorXdp,
    InspectorTc,
    Iptables,
    Haproxy,
    /// The same three with the client's segments reordered on its link
    /// (`Testbed::reorder_client`), each compared with forwarding under
    /// the same reordering.
    NoneReordered,
    InspectorXdpReordered,
    InspectorTcReordered,
}

pub const FILTERS: [Filter; 11] = [
    Filter::None,
    Filter::XdpPass,
    Filter::XdpParse,
    Filter::XdpTrack,
    Filter::InspectorXdp,
    Filter::InspectorTc,
    Filter::Iptables,
    Filter::Haproxy,
    Filter::NoneReordered,
    Filter::InspectorXdpReordered,
    Filter::InspectorTcReordered,
];

/// The rate of the client link's slow class in the reordered
/// configurations: segments held there are overtaken by the others.
const REORDER_SLOW_RATE: &str = "500mbit";

impl Filter {
    /// The configurations `ids` names (comma-separated), with the
    /// baselines their ratios need, in the order of [`FILTERS`].
    pub fn select(ids: &str) -> Result<Vec<Filter>> {
        let mut want = Vec::new();
        for id in ids.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let f = FILTERS
                .iter()
                .find(|f| f.id() == id)
                .with_context(|| format!("no configuration {id:?}"))?;
            want.extend([*f, f.baseline()]);
        }
        ensure!(!want.is_empty(), "no configuration named");
        Ok(FILTERS.into_iter().filter(|f| want.contains(f)).collect())
    }

    pub fn id(self) -> &'static str {
        match self {
            Filter::None => "forwarding",
            Filter::XdpPass => "xdp_bench_pass",
            Filter::XdpParse => "xdp_bench_parse",
            Filter::XdpTrack => "xdp_bench_track",
            Filter::InspectorXdp => "inspector_xdp",
            Filter::InspectorTc => "inspector_tc",
            Filter::Iptables => "iptables_string",
            Filter::Haproxy => "haproxy_tcp",
            Filter::NoneReordered => "forwarding_reordered",
            Filter::InspectorXdpReordered => "inspector_xdp_reordered",
            Filter::InspectorTcReordered => "inspector_tc_reordered",
        }
    }

    /// Whether this configuration runs an XDP program in the gateway.
    fn xdp(self) -> bool {
        matches!(
            self,
            Filter::XdpPass
                | Filter::XdpParse
                | Filter::XdpTrack
                | Filter::InspectorXdp
                | Filter::InspectorXdpReordered
        )
    }

    /// Whether the client's segments are reordered on its link.
    fn reordered(self) -> bool {
        matches!(
            self,
            Filter::NoneReordered | Filter::InspectorXdpReordered | Filter::InspectorTcReordered
        )
    }

    /// The configuration its ratios are taken against: forwarding, under
    /// the same reordering.
    fn baseline(self) -> Filter {
        if self.reordered() {
            Filter::NoneReordered
        } else {
            Filter::None
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Filter::None => "plain forwarding, no filter",
            Filter::XdpPass => {
                "bench_pass (XDP_PASS only) on both gateway veths: the cost of XDP on veth itself"
            }
            Filter::XdpParse => {
                "bench_parse (the inspector's header parsing, then XDP_PASS) on both gateway veths"
            }
            Filter::XdpTrack => {
                "bench_track (header parsing, then one flow-table lookup a packet, an insert a \
                 SYN) on both gateway veths: what tracking flows costs before any inspection"
            }
            Filter::InspectorXdp => "inspector attach --mode xdp on both gateway veths",
            Filter::InspectorTc => "inspector attach --mode tc on both gateway veths",
            Filter::Iptables => {
                "iptables FORWARD -p tcp --dport 25 -m string --algo bm --string STARTTLS -j DROP"
            }
            Filter::Haproxy => {
                "HAProxy, TCP mode, client connects to 10.200.1.1:25, relayed to 10.200.2.2:25"
            }
            Filter::NoneReordered => {
                "plain forwarding, the client's segments reordered on its link (half of them \
                 through an HTB class of 500 Mbit/s the others overtake)"
            }
            Filter::InspectorXdpReordered => {
                "inspector attach --mode xdp, reordered as forwarding_reordered"
            }
            Filter::InspectorTcReordered => {
                "inspector attach --mode tc, reordered as forwarding_reordered"
            }
        }
    }

    /// The programs this configuration runs in the gateway, by name: what
    /// the profiling pass ([`profile`]) reads the time of.
    fn programs(self) -> &'static [&'static str] {
        match self {
            Filter::XdpPass => &[super::kernel::BENCH_PASS],
            Filter::XdpParse => &[super::kernel::BENCH_PARSE],
            Filter::XdpTrack => &[super::kernel::BENCH_TRACK],
            Filter::InspectorXdp | Filter::InspectorXdpReordered => &[program::XDP_PROGRAM],
            Filter::InspectorTc | Filter::InspectorTcReordered => {
                &[program::TC_PROGRAM, program::TC_EGRESS_PROGRAM]
            }
            _ => &[],
        }
    }

    /// Where the client connects.
    fn target(self) -> &'static str {
        match self {
            Filter::Haproxy => "10.200.1.1:25",
            _ => "10.200.2.2:25",
        }
    }
}

/// What the benchmark needs: the eBPF object (for `bench_pass`) and a
/// scratch folder. (`inspector` is the kit's [`inspector_testkit::inspector_bin`].)
pub struct Env<'a> {
    pub object: &'a [u8],
    pub tmp: &'a Path,
}

/// A filter in place; removed on drop.
struct Active<'a> {
    inspector: Option<Inspector>,
    haproxy: Option<Proc>,
    _xdp: Option<Held>,
    iptables: Option<String>,
    /// The test bed whose client link is reordered.
    reordered: Option<&'a Testbed>,
}

impl Active<'_> {
    fn pin_dir(&self) -> Option<&Path> {
        self.inspector.as_ref().map(|i| i.pin_dir())
    }
}

const IPTABLES_RULE: &[&str] = &[
    "FORWARD", "-p", "tcp", "--dport", "25", "-m", "string", "--algo", "bm", "--string",
    "STARTTLS", "-j", "DROP",
];

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Some(gw) = self.reordered.take() {
            gw.stop_reordering();
        }
        // The inspector detaches and checks its pins are gone on drop.
        self.inspector.take();
        if let Some(mut h) = self.haproxy.take() {
            h.terminate(Duration::from_secs(5));
        }
        if let Some(ns) = &self.iptables {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "iptables", "-D"])
                .args(IPTABLES_RULE)
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn activate<'a>(gw: &'a Testbed, env: &Env, f: Filter) -> Result<Active<'a>> {
    let mut a = Active {
        inspector: None,
        haproxy: None,
        _xdp: None,
        iptables: None,
        reordered: None,
    };
    if f.reordered() {
        gw.reorder_client(REORDER_SLOW_RATE);
        a.reordered = Some(gw);
    }
    match f {
        Filter::None | Filter::NoneReordered => {}
        Filter::XdpPass | Filter::XdpParse | Filter::XdpTrack => {
            let name = f.programs()[0];
            let object = env.object.to_vec();
            let ifaces = [gw.gw_client_if.clone(), gw.gw_server_if.clone()];
            a._xdp = Some(gw.gateway.hold(move || {
                let mut ebpf = aya::Ebpf::load(&object)?;
                let p: &mut aya::programs::Xdp = ebpf
                    .program_mut(name)
                    .with_context(|| format!("no {name} program"))?
                    .try_into()?;
                p.load()?;
                for i in &ifaces {
                    p.attach(i, aya::programs::XdpMode::default())
                        .with_context(|| format!("attaching {name} to {i}"))?;
                }
                Ok(ebpf)
            })?);
        }
        Filter::InspectorXdp
        | Filter::InspectorTc
        | Filter::InspectorXdpReordered
        | Filter::InspectorTcReordered => {
            let mode = if matches!(f, Filter::InspectorXdp | Filter::InspectorXdpReordered) {
                "xdp"
            } else {
                "tc"
            };
            // All the load comes from one client address: lift the
            // per-client cap (the idle flows alone are thousands).
            let mut attach = Attach::new(&gw.gateway, &gw.gateway_ifaces())
                .arg("--mode")
                .arg(mode)
                .arg("--max-flows-per-client")
                .arg("65536");
            // Options to try (the fallback's limits, say), space-separated.
            for x in std::env::var("INSPECTOR_BENCH_ATTACH_ARGS")
                .unwrap_or_default()
                .split_whitespace()
            {
                attach = attach.arg(x);
            }
            let i = attach.start().map_err(|e| {
                anyhow!(
                    "inspector attach --mode {mode} failed ({}): {}",
                    e.status,
                    e.stderr.trim()
                )
            })?;
            a.inspector = Some(i);
        }
        Filter::Iptables => {
            let st = gw
                .gateway
                .exec("iptables")
                .arg("-A")
                .args(IPTABLES_RULE)
                .status()?;
            ensure!(st.success(), "adding the iptables rule failed");
            a.iptables = Some(gw.gateway.name().to_string());
        }
        Filter::Haproxy => {
            let cfg = env.tmp.join("haproxy.cfg");
            // maxconn needs about two descriptors per connection, within
            // the open-file limit.
            std::fs::write(
                &cfg,
                "global\n    maxconn 4000\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n\
                 listen smtp\n    bind 10.200.1.1:25\n    server sink 10.200.2.2:25\n",
            )?;
            let mut cmd = gw.gateway.exec("haproxy");
            cmd.arg("-f").arg(&cfg).arg("-db");
            a.haproxy = Some(Proc::spawn(&mut cmd));
            gw.gateway.wait_listening("10.200.1.1:25");
        }
    }
    Ok(a)
}

fn smtp_source(
    gw: &Testbed,
    target: &str,
    sessions: usize,
    messages: usize,
    bytes: usize,
) -> Result<Duration> {
    let mut c = gw.client.exec("smtp-source");
    c.args(["-s", &sessions.to_string(), "-m", &messages.to_string()])
        .args([
            "-l",
            &bytes.to_string(),
            "-f",
            "a@example.org",
            "-t",
            "b@example.com",
        ])
        .arg(target);
    timed(&mut c, Duration::from_secs(600))
}

/// Runs a command to completion within `timeout` and returns how long it
/// took; fails if it fails (with its stderr), times out or is interrupted
/// (the kit's [`Proc`] kills it on the way out).
fn timed(cmd: &mut Command, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut p = Proc::spawn(cmd);
    loop {
        // Returns as soon as the process exits.
        if let Some(st) = p.wait_timeout(Duration::from_millis(100)) {
            let took = t0.elapsed();
            ensure!(
                st.success(),
                "`{}` failed ({st}): {}",
                p.what(),
                p.stderr().trim()
            );
            return Ok(took);
        }
        if t0.elapsed() > timeout || interrupted() {
            bail!(
                "`{}` did not finish within {timeout:?} (or was interrupted)",
                p.what()
            );
        }
    }
}

/// One full session (connect, EHLO, MAIL, RCPT, DATA, body, QUIT); returns
/// the time from connect to the QUIT reply.
fn one_session(addr: SocketAddr) -> Result<Duration> {
    let t0 = Instant::now();
    let mut s = Smtp::try_connect(addr, Duration::from_secs(10))?;
    for (cmd, code) in [
        (&b"EHLO bench.example.org\r\n"[..], 250),
        (b"MAIL FROM:<a@example.org>\r\n", 250),
        (b"RCPT TO:<b@example.com>\r\n", 250),
        (b"DATA\r\n", 354),
        (
            b"Subject: latency probe\r\n\r\nA short message.\r\n.\r\n",
            250,
        ),
        (b"QUIT\r\n", 221),
    ] {
        s.try_expect_raw(cmd, code)?;
    }
    Ok(t0.elapsed())
}

/// `n` sequential sessions from the client namespace; latencies in ms.
fn latency(gw: &Testbed, target: &str, n: usize) -> Result<Vec<f64>> {
    let addr: SocketAddr = target.parse()?;
    in_netns(&gw.client, move || {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            if interrupted() {
                bail!("interrupted");
            }
            v.push(one_session(addr)?.as_secs_f64() * 1e3);
        }
        Ok(v)
    })
}

/// Opens `n` SMTP sessions to the idle server (greeting read, EHLO
/// answered) and keeps them open.
fn open_idle(gw: &Testbed, n: usize) -> Result<Vec<Smtp>> {
    in_netns(&gw.client, move || {
        let addr: SocketAddr = "10.200.2.2:587".parse()?;
        let threads = 4;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                std::thread::spawn(move || -> Result<Vec<Smtp>> {
                    let mut v = Vec::with_capacity(count);
                    for _ in 0..count {
                        if interrupted() {
                            bail!("interrupted");
                        }
                        let mut s = Smtp::try_connect(addr, Duration::from_secs(10))?;
                        s.try_expect_raw(b"EHLO idle.example.org\r\n", 250)?;
                        v.push(s);
                    }
                    Ok(v)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("idle client thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// One configuration's figures over the rounds.
#[derive(Default)]
struct Series {
    small_msgs_per_s: Vec<f64>,
    large_mb_per_s: Vec<f64>,
    latency_p50_ms: Vec<f64>,
    latency_p99_ms: Vec<f64>,
    /// Inspector counters after each round (what it saw), if it ran.
    counters: Vec<Value>,
    /// How XDP ended up attached to the gateway's veths, if it was.
    xdp_mode: Option<String>,
    /// The profiling pass's figures, per load ([`profile`]), if the
    /// configuration runs a program.
    program: Value,
}

/// The XDP attach mode of `iface` in the gateway (`ip -j link`), if any.
fn xdp_mode(gw: &Testbed, iface: &str) -> Option<String> {
    let v = gw.gateway.link_json(iface);
    let mode = v.get("xdp")?.get("mode")?.as_u64()?;
    Some(
        match mode {
            1 => "native (driver)",
            2 => "generic (skb)",
            3 => "offload",
            4 => "multi",
            _ => "unknown",
        }
        .to_string(),
    )
}

pub struct Report {
    params: Params,
    configs: Vec<(Filter, Series)>,
    memory: Value,
    scale: Value,
}

/// Run time (ns) and runs, summed over the loaded programs named in
/// `names`, from the kernel's statistics (counted while a
/// `BPF_ENABLE_STATS` descriptor is open).
fn program_time(names: &[&str]) -> (u64, u64) {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|i| i.name_as_str().is_some_and(|n| names.contains(&n)))
        .fold((0, 0), |(ns, runs), i| {
            (ns + i.run_time().as_nanos() as u64, runs + i.run_count())
        })
}

/// One load of [`measure`] with the program's time read around it: `units`
/// messages or sessions, `run` sends them and returns the wall time.
fn profile_phase(
    names: &[&str],
    what: &str,
    units: usize,
    run: impl FnOnce() -> Result<Duration>,
) -> Result<Value> {
    let (ns0, runs0) = program_time(names);
    let wall = run()?;
    let (ns1, runs1) = program_time(names);
    let (ns, runs) = (ns1.saturating_sub(ns0), runs1.saturating_sub(runs0));
    ensure!(runs > 0, "{what}: the kernel counted no run of {names:?}");
    Ok(json!({
        "load": what,
        "units": units,
        "wall_s": num(wall.as_secs_f64()),
        "program_ns": ns,
        "runs": runs,
        "ns_per_run": num(ns as f64 / runs as f64),
        "runs_per_unit": num(runs as f64 / units as f64),
        "program_us_per_unit": num(ns as f64 / units as f64 / 1e3),
        // Of one CPU: the time the program took while the load ran.
        "cpu_share": num(ns as f64 / wall.as_nanos() as f64),
    }))
}

/// The profiling pass of configuration `f`, if it runs a program: the
/// three loads of [`measure`] once more, with the kernel's run-time
/// statistics on, and the program's time per run and per message read
/// around each. Kept out of the rounds, whose throughput it would change:
/// the statistics cost two clock reads a run.
fn profile(gw: &Testbed, env: &Env, p: &Params, f: Filter) -> Result<Value> {
    let names = f.programs();
    if names.is_empty() {
        return Ok(Value::Null);
    }
    let active = activate(gw, env, f)?;
    let target = f.target();
    let small = profile_phase(names, "small", p.small_messages, || {
        smtp_source(gw, target, p.sessions, p.small_messages, p.small_bytes)
    })?;
    let large = profile_phase(names, "large", p.large_messages, || {
        smtp_source(gw, target, p.sessions, p.large_messages, p.large_bytes)
    })?;
    let latency = profile_phase(names, "latency", p.latency_sessions, || {
        let t0 = Instant::now();
        latency(gw, target, p.latency_sessions)?;
        Ok(t0.elapsed())
    })?;
    drop(active);
    Ok(json!({ "small": small, "large": large, "latency": latency }))
}

fn measure(gw: &Testbed, p: &Params, target: &str, s: &mut Series) -> Result<()> {
    let t = smtp_source(gw, target, p.sessions, p.small_messages, p.small_bytes)?;
    s.small_msgs_per_s
        .push(p.small_messages as f64 / t.as_secs_f64());
    let t = smtp_source(gw, target, p.sessions, p.large_messages, p.large_bytes)?;
    s.large_mb_per_s
        .push((p.large_messages * p.large_bytes) as f64 / 1e6 / t.as_secs_f64());
    let lat = latency(gw, target, p.latency_sessions)?;
    s.latency_p50_ms.push(quantile(&lat, 0.50));
    s.latency_p99_ms.push(quantile(&lat, 0.99));
    Ok(())
}

/// Counters that show the inspector really was in the path, and anything it
/// dropped (`status`: why the fallback's daemon dropped what it did).
fn inspector_summary(stats: &Value, status: &Value) -> Value {
    let g = |k: &str| stats.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "fallback_dropped": status["fallback"]["dropped"].clone(),
        "fallback_peak_flow_bytes": status["fallback"]["peak_flow_bytes"].clone(),
        "fallback_peak_total_bytes": status["fallback"]["peak_total_bytes"].clone(),
        "packets_inspected": g("packets_inspected"),
        "commands_seen": g("commands_seen"),
        "commands_masked": g("commands_masked"),
        "bodies": g("bodies"),
        "flows_created": g("flows_created"),
        "dropped": g("dropped"),
        "out_of_order_drops": g("out_of_order_drops"),
        "diverted": g("diverted"),
        "reassembled": g("reassembled"),
        "fallback_drops": g("fallback_drops"),
        "retrans_reinspected": g("retrans_reinspected"),
        "retrans_conflicts": g("retrans_conflicts"),
        "retrans_unverifiable": g("retrans_unverifiable"),
        "awaiting_reply_drops": g("awaiting_reply_drops"),
        "midstream": g("midstream"),
    })
}

/// Runs the configurations `filters` (all of [`FILTERS`] for the report);
/// memory and scale only with `memory_and_scale`.
pub fn run(
    env: &Env,
    p: Params,
    filters: &[Filter],
    with_memory_and_scale: bool,
) -> Result<Report> {
    eprintln!("bench: building the namespace gateway");
    let gw = Testbed::new(Offloads::Default);
    for ns in [&gw.client, &gw.gateway, &gw.server] {
        for (k, v) in [
            // Thousands of short sessions per run: reuse TIME_WAIT ports,
            // and use the whole port range.
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net.core.somaxconn", "16384"),
        ] {
            ns.sysctl(k, v);
        }
    }
    let mut sink = Proc::spawn(gw.server.exec("smtp-sink").args([
        "-u",
        "nobody",
        "-m",
        "1024",
        "10.200.2.2:25",
        "1024",
    ]));
    gw.server.wait_listening("10.200.2.2:25");
    let m = (p.idle_flows + 1000).to_string();
    let mut idle_sink = Proc::spawn(gw.server.exec("smtp-sink").args([
        "-u",
        "nobody",
        "-t",
        "3600",
        "-m",
        &m,
        "10.200.2.2:587",
        "16384",
    ]));
    gw.server.wait_listening("10.200.2.2:587");

    // Warm-up: one pass through plain forwarding (ARP, page cache, ...).
    smtp_source(
        &gw,
        "10.200.2.2:25",
        p.sessions,
        p.sessions * 2,
        p.small_bytes,
    )?;

    let mut configs: Vec<(Filter, Series)> =
        filters.iter().map(|f| (*f, Series::default())).collect();
    for round in 0..p.rounds {
        for (f, series) in configs.iter_mut() {
            if interrupted() {
                bail!("interrupted");
            }
            eprintln!("bench: round {}/{}: {}", round + 1, p.rounds, f.id());
            alive(&mut sink, "smtp-sink")?;
            let active = activate(&gw, env, *f)?;
            if series.xdp_mode.is_none() {
                series.xdp_mode = xdp_mode(&gw, &gw.gw_client_if);
            }
            measure(&gw, &p, f.target(), series)
                .with_context(|| format!("measuring {}", f.id()))?;
            if let Some(pin) = active.pin_dir() {
                let st = stats_json(pin);
                let cmds = st
                    .get("commands_seen")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                ensure!(
                    cmds > 0,
                    "{}: the inspector saw no command: it was not in the path",
                    f.id()
                );
                series
                    .counters
                    .push(inspector_summary(&st, &status_json(pin)));
                // What attach logged (the fallback's drops with their
                // reasons, say), kept where INSPECTOR_BENCH_LOGS says.
                if let (Some(dir), Some(i)) = (
                    std::env::var_os("INSPECTOR_BENCH_LOGS"),
                    active.inspector.as_ref(),
                ) {
                    let path = Path::new(&dir).join(format!("{}-{}.log", f.id(), round + 1));
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&path, i.stderr())
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
            drop(active);
        }
    }

    if configs.iter().any(|(f, _)| !f.programs().is_empty()) {
        // Open while the profiling passes run; the kernel stops counting
        // when it closes (unless something else keeps it on).
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("turning on the kernel's BPF run-time statistics")?;
        for (f, series) in configs.iter_mut() {
            if interrupted() {
                bail!("interrupted");
            }
            if f.programs().is_empty() {
                continue;
            }
            eprintln!("bench: profiling pass: {}", f.id());
            alive(&mut sink, "smtp-sink")?;
            series.program =
                profile(&gw, env, &p, *f).with_context(|| format!("profiling {}", f.id()))?;
        }
    }

    let (memory, scale) = if with_memory_and_scale {
        eprintln!("bench: memory and scale ({} idle flows)", p.idle_flows);
        memory_and_scale(&gw, env, &p, &mut sink, &mut idle_sink)?
    } else {
        (Value::Null, Value::Null)
    };
    Ok(Report {
        params: p,
        configs,
        memory,
        scale,
    })
}

/// Fails if `p` has exited.
fn alive(p: &mut Proc, what: &str) -> Result<()> {
    match p.try_status() {
        Some(st) => bail!("{what} exited unexpectedly ({st}): {}", p.stderr().trim()),
        None => Ok(()),
    }
}

/// One pinned map, as the kernel accounts it (`bpftool map show`).
fn pinned_maps(pin: &Path) -> Result<Vec<Value>> {
    let mut maps = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(pin)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type()?.is_dir() {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(e.path())
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            continue; // not a map (a pinned program or link)
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
        maps.push(json!({
            "id": v.get("id").cloned().unwrap_or(Value::Null),
            "pin": e.file_name().to_string_lossy(),
            "type": v.get("type").cloned().unwrap_or(Value::Null),
            "key_bytes": v.get("bytes_key").cloned().unwrap_or(Value::Null),
            "value_bytes": v.get("bytes_value").cloned().unwrap_or(Value::Null),
            "max_entries": v.get("max_entries").cloned().unwrap_or(Value::Null),
            "memlock_bytes": v.get("bytes_memlock").cloned().unwrap_or(Value::Null),
        }));
    }
    Ok(maps)
}

/// Every distinct BPF map a process holds open (pinned or not), as the
/// kernel accounts it: ids from /proc/PID/fdinfo, details from bpftool.
fn process_maps(pid: u32) -> Result<Vec<Value>> {
    let mut ids = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.insert(id);
        }
    }
    let mut maps = Vec::new();
    for id in ids {
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
        maps.push(json!({
            "id": id,
            "name": v.get("name").cloned().unwrap_or(Value::Null),
            "type": v.get("type").cloned().unwrap_or(Value::Null),
            "max_entries": v.get("max_entries").cloned().unwrap_or(Value::Null),
            "memlock_bytes": v.get("bytes_memlock").cloned().unwrap_or(Value::Null),
        }));
    }
    Ok(maps)
}

fn memory_and_scale(
    gw: &Testbed,
    env: &Env,
    p: &Params,
    sink: &mut Proc,
    idle_sink: &mut Proc,
) -> Result<(Value, Value)> {
    use inspector_common::flow::{Flow, FlowKey};
    let key = std::mem::size_of::<FlowKey>();
    let value = std::mem::size_of::<Flow>();

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut tracked = Vec::new();
    let mut memory = Value::Null;
    for round in 0..p.rounds {
        if interrupted() {
            bail!("interrupted");
        }
        alive(sink, "smtp-sink")?;
        alive(idle_sink, "smtp-sink (idle flows, port 587)")?;
        let active = activate(gw, env, Filter::InspectorXdp)?;
        let pin = active.pin_dir().context("no pin dir")?.to_path_buf();
        if round == 0 {
            let maps = pinned_maps(&pin)?;
            let total: u64 = maps
                .iter()
                .filter_map(|m| m["memlock_bytes"].as_u64())
                .sum();
            let flows = maps
                .iter()
                .find(|m| m["pin"] == inspector_common::flow::FLOWS_MAP)
                .cloned()
                .context("no pinned flow table")?;
            let entries = flows["max_entries"].as_u64().unwrap_or(0);
            let memlock = flows["memlock_bytes"].as_u64().unwrap_or(0);
            let pid = active.inspector.as_ref().map(|i| i.pid()).unwrap_or(0) as u32;
            let mut all = process_maps(pid)?;
            for m in all.iter_mut() {
                let pin = maps
                    .iter()
                    .find(|p| p["id"] == m["id"])
                    .map(|p| p["pin"].clone());
                m["pinned_as"] = pin.unwrap_or(Value::Null);
            }
            let all_total: u64 = all.iter().filter_map(|m| m["memlock_bytes"].as_u64()).sum();
            memory = json!({
                "flow_key_bytes": key,
                "flow_value_bytes": value,
                "flow_key_plus_value_bytes": key + value,
                "flow_table_max_entries": entries,
                "flow_table_memlock_bytes": memlock,
                "kernel_bytes_per_flow": num(memlock as f64 / entries.max(1) as f64),
                "total_map_memlock_bytes": total,
                "process_map_memlock_bytes": all_total,
                "maps": maps,
                "process_maps": all,
            });
        }
        // Alternate the order, so that neither always runs first.
        let idle_first = round % 2 == 1;
        let small = |gw: &Testbed| -> Result<f64> {
            let t = smtp_source(
                gw,
                "10.200.2.2:25",
                p.sessions,
                p.small_messages,
                p.small_bytes,
            )?;
            Ok(p.small_messages as f64 / t.as_secs_f64())
        };
        if !idle_first {
            without.push(small(gw)?);
        }
        let t0 = Instant::now();
        let idle = open_idle(gw, p.idle_flows)?;
        let opened_in = t0.elapsed();
        let st = stats_json(&pin);
        let active_flows = st.get("flows_active").and_then(|v| v.as_u64()).unwrap_or(0);
        ensure!(
            active_flows >= p.idle_flows as u64,
            "{} idle flows open, the inspector tracks only {active_flows} active flows",
            p.idle_flows
        );
        tracked.push(json!({
            "flows_active": active_flows,
            "flows_tracked": st.get("flows_tracked").cloned().unwrap_or(Value::Null),
            "opened_in_s": num(opened_in.as_secs_f64()),
        }));
        with.push(small(gw)?);
        drop(idle);
        if idle_first {
            std::thread::sleep(Duration::from_secs(1));
            without.push(small(gw)?);
        }
        drop(active);
    }
    let w = Summary::of(&without);
    let i = Summary::of(&with);
    let scale = json!({
        "filter": Filter::InspectorXdp.id(),
        "idle_flows": p.idle_flows,
        "rounds": p.rounds,
        "small_msgs_per_s_without_idle": w.json(),
        "small_msgs_per_s_with_idle": i.json(),
        "ratio_with_to_without": num(i.median / w.median),
        "tracked": tracked,
    });
    Ok((memory, scale))
}

impl Report {
    /// The medians (small msg/s, large MB/s, latency p50) of the
    /// configuration `f`'s ratios are taken against.
    fn baseline(&self, f: Filter) -> (f64, f64, f64) {
        let base = self
            .configs
            .iter()
            .find(|(b, _)| *b == f.baseline())
            .map(|(_, s)| s)
            .unwrap_or(&self.configs[0].1);
        (
            Summary::of(&base.small_msgs_per_s).median,
            Summary::of(&base.large_mb_per_s).median,
            Summary::of(&base.latency_p50_ms).median,
        )
    }

    /// Configuration `f`'s throughput against `xdp_bench_pass` (the cost
    /// of XDP on veth itself), round by round: the configurations of one
    /// round run in the same minutes, so a ratio per round leaves out what
    /// drifts between rounds. Small messages, then 1 MiB ones; `None` if
    /// `xdp_bench_pass` was not run or `f` is not an XDP configuration.
    fn vs_xdp_pass(&self, f: Filter) -> Option<(Summary, Summary)> {
        if !f.xdp() || f.reordered() || f == Filter::XdpPass {
            return None;
        }
        let (_, pass) = self.configs.iter().find(|(b, _)| *b == Filter::XdpPass)?;
        let (_, x) = self.configs.iter().find(|(b, _)| *b == f)?;
        let per_round =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
        Some((
            Summary::of(&per_round(&x.small_msgs_per_s, &pass.small_msgs_per_s)),
            Summary::of(&per_round(&x.large_mb_per_s, &pass.large_mb_per_s)),
        ))
    }

    pub fn json(&self) -> Value {
        let configs: Vec<Value> = self
            .configs
            .iter()
            .map(|(f, s)| {
                let (b_small, b_large, b_p50) = self.baseline(*f);
                let small = Summary::of(&s.small_msgs_per_s);
                let large = Summary::of(&s.large_mb_per_s);
                let p50 = Summary::of(&s.latency_p50_ms);
                json!({
                    "id": f.id(),
                    "description": f.describe(),
                    "small_msgs_per_s": small.json(),
                    "large_mb_per_s": large.json(),
                    "latency_p50_ms": p50.json(),
                    "latency_p99_ms": Summary::of(&s.latency_p99_ms).json(),
                    "small_ratio_to_forwarding": num(small.median / b_small),
                    "large_ratio_to_forwarding": num(large.median / b_large),
                    "latency_p50_ratio_to_forwarding": num(p50.median / b_p50),
                    "per_round_ratios_to_xdp_bench_pass": self.vs_xdp_pass(*f).map(|(s, l)| {
                        json!({ "small": s.json(), "large": l.json() })
                    }),
                    "inspector_counters": s.counters,
                    "xdp_mode": s.xdp_mode,
                    "program_time": s.program,
                })
            })
            .collect();
        let p = &self.params;
        json!({
            "rounds": p.rounds,
            "parallel_sessions": p.sessions,
            "small_messages": p.small_messages,
            "small_message_bytes": p.small_bytes,
            "large_messages": p.large_messages,
            "large_message_bytes": p.large_bytes,
            "latency_sessions": p.latency_sessions,
            "offloads": "veth defaults",
            "configs": configs,
            "memory": self.memory,
            "scale": self.scale,
        })
    }

    /// The profiling passes' table: where a configuration's time in the
    /// kernel program goes, per load.
    fn program_markdown(&self) -> String {
        let rows: Vec<_> = self
            .configs
            .iter()
            .filter(|(_, x)| !x.program.is_null())
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let p = &self.params;
        let mut s = format!(
            "\nTime in the gateway's program, from the kernel's run-time statistics \
             (BPF_ENABLE_STATS) in one more pass per configuration after the rounds, \
             outside their figures (the statistics add two clock reads a run, in the ns a run \
             too). Per message: the program's time over all the packets of the load, both \
             directions, divided by its {} small messages, {} large ones, {} sessions; \
             CPU: that time as a share of one CPU over the load's wall time.\n\n",
            p.small_messages, p.large_messages, p.latency_sessions
        );
        s.push_str(
            "| configuration | small: ns a run | runs a msg | us a msg | CPU | \
             1 MiB: ns a run | runs a msg | us a msg | CPU | \
             latency: ns a run | runs a session | us a session |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let f1 = |v: &Value| {
            v.as_f64()
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "n/a".into())
        };
        let pct = |v: &Value| {
            v.as_f64()
                .map(|x| format!("{:.1}%", x * 100.0))
                .unwrap_or_else(|| "n/a".into())
        };
        for (f, x) in rows {
            let (a, b, c) = (
                &x.program["small"],
                &x.program["large"],
                &x.program["latency"],
            );
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                f.id(),
                fmt0(&a["ns_per_run"]),
                f1(&a["runs_per_unit"]),
                f1(&a["program_us_per_unit"]),
                pct(&a["cpu_share"]),
                fmt0(&b["ns_per_run"]),
                fmt0(&b["runs_per_unit"]),
                fmt0(&b["program_us_per_unit"]),
                pct(&b["cpu_share"]),
                fmt0(&c["ns_per_run"]),
                f1(&c["runs_per_unit"]),
                f1(&c["program_us_per_unit"]),
            ));
        }
        s
    }

    pub fn markdown(&self) -> String {
        let p = &self.params;
        let mut s = format!(
            "### End to end through the namespace gateway ({} round(s), interleaved; median [min–max])\n\n\
             smtp-source -s {} to smtp-sink: {} messages of {} B (msg/s), {} messages of {} B (MB/s = 10^6 B/s); \
             latency: {} sequential full sessions (connect to 221 after QUIT) per round, p50 and p99.\n\n",
            p.rounds,
            p.sessions,
            p.small_messages,
            p.small_bytes,
            p.large_messages,
            p.large_bytes,
            p.latency_sessions
        );
        s.push_str(
            "`vs fwd`: against `forwarding`; the `_reordered` configurations against \
             `forwarding_reordered`, under the same reordering.\n\n",
        );
        s.push_str("| configuration | small msg/s | vs fwd | 1 MiB msgs MB/s | vs fwd | latency p50 ms | latency p99 ms |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (f, x) in &self.configs {
            let (b_small, b_large, _) = self.baseline(*f);
            let small = Summary::of(&x.small_msgs_per_s);
            let large = Summary::of(&x.large_mb_per_s);
            s.push_str(&format!(
                "| {} | {} | {:.2} | {} | {:.2} | {} | {} |\n",
                f.id(),
                small.cell(0),
                small.median / b_small,
                large.cell(0),
                large.median / b_large,
                Summary::of(&x.latency_p50_ms).cell(2),
                Summary::of(&x.latency_p99_ms).cell(2),
            ));
        }
        s.push('\n');
        let vs_pass: Vec<_> = self
            .configs
            .iter()
            .filter_map(|(f, _)| Some((*f, self.vs_xdp_pass(*f)?)))
            .collect();
        if !vs_pass.is_empty() {
            s.push_str(
                "XDP configurations against `xdp_bench_pass`, the cost of XDP on veth taken \
                 out (a ratio per round, the configurations of a round running in the same \
                 minutes; median [min–max]):\n\n\
                 | configuration | small msg/s vs xdp_bench_pass | 1 MiB MB/s vs xdp_bench_pass |\n\
                 |---|---:|---:|\n",
            );
            for (f, (small, large)) in vs_pass {
                s.push_str(&format!(
                    "| {} | {} | {} |\n",
                    f.id(),
                    small.cell(2),
                    large.cell(2)
                ));
            }
            s.push('\n');
        }
        for (f, x) in &self.configs {
            let mode = x
                .xdp_mode
                .as_deref()
                .map(|m| format!(" (XDP attached: {m})"))
                .unwrap_or_default();
            s.push_str(&format!("- `{}`: {}{mode}\n", f.id(), f.describe()));
        }
        s.push_str(
            "\nWhat the inspector counted (sum over the rounds; `inspector stats`; the \
            fallback's drops by reason from `inspector status`):\n\n",
        );
        s.push_str("| configuration | packets inspected | commands | bodies | dropped | of which out of order | retransmissions re-inspected | diverted | reassembled | fallback drops (flow limit / total limit / timeout / flow gone) |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (f, x) in &self.configs {
            if x.counters.is_empty() {
                continue;
            }
            let sum = |k: &str| -> u64 { x.counters.iter().filter_map(|c| c[k].as_u64()).sum() };
            let why = |k: &str| -> u64 {
                x.counters
                    .iter()
                    .filter_map(|c| c["fallback_dropped"][k].as_u64())
                    .sum()
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({} / {} / {} / {}) |\n",
                f.id(),
                sum("packets_inspected"),
                sum("commands_seen"),
                sum("bodies"),
                sum("dropped"),
                sum("out_of_order_drops"),
                sum("retrans_reinspected"),
                sum("diverted"),
                sum("reassembled"),
                sum("fallback_drops"),
                why("flow_limit"),
                why("total_limit"),
                why("timeout"),
                why("flow_gone"),
            ));
        }
        s.push_str(&self.program_markdown());
        if self.memory.is_null() {
            return s;
        }
        let m = &self.memory;
        s.push_str("\n### Memory (inspector attach --mode xdp, default sizes)\n\n");
        s.push_str("| figure | value |\n|---|---:|\n");
        for (label, k) in [
            (
                "flow key + value (FlowKey + Flow), bytes",
                "flow_key_plus_value_bytes",
            ),
            ("flow table entries (max)", "flow_table_max_entries"),
            (
                "flow table memlock (kernel), bytes",
                "flow_table_memlock_bytes",
            ),
            ("kernel bytes per tracked flow", "kernel_bytes_per_flow"),
            (
                "all pinned maps, memlock bytes (bpftool)",
                "total_map_memlock_bytes",
            ),
            (
                "every map the attach process holds, pinned or not, memlock bytes",
                "process_map_memlock_bytes",
            ),
        ] {
            s.push_str(&format!("| {label} | {} |\n", m[k]));
        }
        if let Some(maps) = m["process_maps"].as_array() {
            s.push_str("\nEvery map the attach process holds (bpftool; memlock is the kernel's accounting):\n\n");
            s.push_str(
                "| map | pinned as | type | max entries | memlock B |\n|---|---|---|---:|---:|\n",
            );
            for x in maps {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    x["name"].as_str().unwrap_or("?"),
                    x["pinned_as"].as_str().unwrap_or("(not pinned)"),
                    x["type"].as_str().unwrap_or("?"),
                    x["max_entries"],
                    x["memlock_bytes"]
                ));
            }
        }
        let sc = &self.scale;
        let cell = |v: &Value| {
            format!(
                "{} [{}–{}]",
                fmt0(&v["median"]),
                fmt0(&v["min"]),
                fmt0(&v["max"])
            )
        };
        s.push_str(&format!(
            "\n### Scale: small-message throughput with {} idle SMTP flows tracked (inspector XDP)\n\n\
             | without idle flows msg/s | with idle flows msg/s | ratio |\n|---:|---:|---:|\n| {} | {} | {:.2} |\n",
            sc["idle_flows"],
            cell(&sc["small_msgs_per_s_without_idle"]),
            cell(&sc["small_msgs_per_s_with_idle"]),
            sc["ratio_with_to_without"].as_f64().unwrap_or(f64::NAN)
        ));
        s
    }
}

fn fmt0(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.0}"))
        .unwrap_or_else(|| "n/a".into())
}
