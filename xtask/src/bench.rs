//! `cargo xtask bench [--quick]`: what the inspector costs, measured against
//! baselines run in the same command, with medians and spread over repeated
//! runs. Prints a Markdown report and writes the same figures to
//! `target/bench/report.json` (and `report.md`); `INSPECTOR_BENCH_DIR`
//! overrides the folder. Methodology and caveats: `bench/README.md`.
//!
//! 1. In-kernel cost per packet (BPF_PROG_TEST_RUN): `inspector_xdp` against
//!    `bench_parse` and `bench_pass` on the same frames ([`kernel`]).
//! 2. End to end through the namespace gateway of `docs/testbed.md`: `smtp-source`
//!    to `smtp-sink`, plain forwarding against the inspector (XDP, TC),
//!    an XDP program that only passes, an iptables string match and HAProxy
//!    ([`e2e`]).
//! 3. Memory per tracked flow and of all maps, and throughput with thousands
//!    of idle SMTP flows tracked.
//!
//! Runs as root. The frames, the program runner, the gateway and the
//! processes are the test kit's (`inspector-testkit`); this module keeps the
//! measurements and the report. Everything it creates (namespaces, veths,
//! pin dirs, a temp folder) carries `inspt-<pid>x<n>` and is removed on
//! exit, also after an error or Ctrl-C; leftovers of a killed run are
//! removed by the next one (or the next test run).

mod e2e;
mod kernel;
mod stats;

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Instant,
};

use anyhow::{bail, Context, Result};
use inspector_testkit::target_dir;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use serde_json::{json, Value};

use crate::util::{root, step};

/// Set by SIGINT or SIGTERM once [`catch_signals`] ran.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Whether SIGINT or SIGTERM arrived: long loops stop and clean up.
pub fn interrupted() -> bool {
    INTERRUPTED
        .get()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// SIGINT and SIGTERM no longer kill the process: they set the flag of
/// [`interrupted`], so that everything built so far is removed on the way
/// out.
fn catch_signals() -> Result<()> {
    let flag = INTERRUPTED.get_or_init(Default::default);
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    Ok(())
}

/// The eBPF object the benchmark loads: the one `inspector`'s build script
/// built (the programs `bench_pass` and `bench_parse` included).
/// `INSPECTOR_BENCH_OBJECT` names another object instead (built the same
/// way, for instance a copy kept from before a change, to compare the two
/// back to back).
fn ebpf_object() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("INSPECTOR_BENCH_OBJECT") {
        return Ok(PathBuf::from(p));
    }
    // The object built with the `bench` feature: the production programs
    // and the baselines, none of which the embedded object carries.
    crate::ebpf::bench_object()
}

/// The notes every report carries: what the figures mean.
const NOTES: &[&str] = &[
    "In-kernel figures are BPF_PROG_TEST_RUN averages: the kernel runs the program `repeat` times on one buffer and reports the mean time per run, truncated to whole ns.",
    "Stateful cases (b)-(i): the flow is built first (SYN, SYN-ACK, greeting; for (d) and (g) also MAIL/RCPT/DATA and 250/250/354; for (i) the client's EHLO). With repeat N every run after the first is a retransmission of the same segment, which the inspector re-parses from its checkpoint: the same per-byte work as the first pass, plus a comparison of the resulting parser state. The fresh-flow rows measure the first, in-order pass (one run per flow).",
    "Cases (e) and (i) run in monitor mode: the mask is computed but not stored, so every repetition sees the original bytes. The cost of the real in-place masking and checksum fix is the fresh-flow row (e1), enforcing, one run per flow, checked to come out masked with a valid checksum.",
    "Rows (k1)-(k3) are the three packets that open a flow, each run once on a new flow (checked: one flow created). A test run arrives on the loopback device, which the server-side check believes without its route lookup; on a gateway the SYN-ACK and later server packets also pay that.",
    "Ratios are taken per round against bench_parse (the inspector's own header parsing, then XDP_PASS) run on the same frame in the same round; the spread is over rounds.",
    "Every run is checked: verdict XDP_PASS, frame unchanged (or masked as expected), counters showing the intended path (inspected, re-inspected, nothing dropped); any mismatch fails the benchmark.",
    "End to end: the configurations run one after the other in each round, rounds repeat; veth offloads are at their defaults. An XDP program without frags support on a veth makes the peer turn GSO off, so xdp_bench_pass shows the cost of XDP on veth itself, separate from the inspector's.",
    "The inspector configurations are checked to have seen SMTP commands (stats counters are in the JSON).",
];

/// How much the in-kernel part measures.
fn kernel_params(quick: bool) -> kernel::Params {
    if quick {
        kernel::Params {
            samples: 3,
            repeat: 5000,
            fresh_flows: 100,
        }
    } else {
        kernel::Params {
            samples: 7,
            repeat: 100_000,
            fresh_flows: 1000,
        }
    }
}

/// `cargo xtask bench --kernel-only`: the in-kernel part alone, printed
/// (the per-stage table included), no report written. Needs only the eBPF
/// object, so it is quick to repeat while changing the kernel code.
pub fn run_kernel(quick: bool) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("cargo xtask bench needs root (BPF_PROG_TEST_RUN)");
    }
    catch_signals()?;
    let object_path = ebpf_object()?;
    let object = std::fs::read(&object_path)
        .with_context(|| format!("reading {}", object_path.display()))?;
    let k = kernel::run(&object, kernel_params(quick))?;
    println!("{}", k.markdown());
    Ok(())
}

pub fn run(quick: bool) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("cargo xtask bench needs root (network namespaces, XDP, bpffs, BPF_PROG_TEST_RUN)");
    }
    catch_signals()?;
    let nofile = raise_nofile(65536);
    inspector_testkit::remove_stale_once();

    let started = Instant::now();
    let object_path = ebpf_object()?;
    let inspector = target_dir().join("release/inspector");
    for p in [&object_path, &inspector] {
        if !p.exists() {
            bail!("{} is missing: run `cargo xtask build` first", p.display());
        }
    }
    let object = std::fs::read(&object_path)
        .with_context(|| format!("reading {}", object_path.display()))?;
    let out_dir = std::env::var_os("INSPECTOR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("bench"));
    let tmp = tempfile::Builder::new()
        .prefix(&format!(
            "{}-{}-bench",
            inspector_testkit::NAME_PREFIX,
            inspector_testkit::unique_id()
        ))
        .tempdir()
        .context("creating a temporary folder")?;

    let meta = metadata(quick)?;
    // A partial run: these end-to-end configurations only (and their
    // baselines), without the in-kernel part, memory and scale.
    let only = std::env::var("INSPECTOR_BENCH_CONFIGS").ok();
    let filters = match &only {
        Some(ids) => e2e::Filter::select(ids)?,
        None => e2e::FILTERS.to_vec(),
    };
    let kp = kernel_params(quick);
    let mut ep = if quick {
        e2e::Params {
            rounds: 1,
            sessions: 20,
            small_messages: 200,
            small_bytes: 1000,
            large_messages: 20,
            large_bytes: 1 << 20,
            latency_sessions: 30,
            idle_flows: 1000,
        }
    } else {
        // Runs of a second or more each (a few hundred ms are too noisy on
        // a shared machine), five rounds for the medians.
        e2e::Params {
            rounds: 5,
            sessions: 20,
            small_messages: 5000,
            small_bytes: 1000,
            large_messages: 200,
            large_bytes: 1 << 20,
            latency_sessions: 1000,
            idle_flows: 10_000,
        }
    };

    // Fewer (or more) end-to-end rounds, for a quick look at one change's
    // profiling pass, say.
    if let Ok(v) = std::env::var("INSPECTOR_BENCH_ROUNDS") {
        ep.rounds = v.parse().ok().filter(|r| *r > 0).with_context(|| {
            format!("INSPECTOR_BENCH_ROUNDS={v}: a number of rounds, 1 or more")
        })?;
    }
    // Idle flows: one descriptor each here, one each in the idle server.
    let max_idle = (nofile as usize).saturating_sub(1000);
    if ep.idle_flows > max_idle {
        eprintln!(
            "bench: the open-file limit is {nofile}: {max_idle} idle flows instead of {}",
            ep.idle_flows
        );
        ep.idle_flows = max_idle;
    }
    let k = if only.is_none() {
        step(&format!(
            "bench: in-kernel cost (BPF_PROG_TEST_RUN, {} samples x repeat {}, about {:.0} s)",
            kp.samples,
            kp.repeat,
            kernel::estimate(kp).as_secs_f64()
        ));
        let k = kernel::run(&object, kp)?;
        eprint!("{}", k.markdown());
        Some(k)
    } else {
        None
    };

    step("bench: end to end through a namespace gateway, memory and scale");
    let e = e2e::run(
        &e2e::Env {
            object: &object,
            tmp: tmp.path(),
        },
        ep,
        &filters,
        only.is_none(),
    )?;

    let mut meta = meta;
    meta["configs_only"] = json!(only);
    meta["loadavg_end"] = json!(loadavg());
    meta["duration_s"] = stats::num(started.elapsed().as_secs_f64());
    let report = json!({
        "schema": 1,
        "meta": meta,
        "kernel": k.as_ref().map(|k| k.json()),
        "end_to_end": e.json(),
        "notes": NOTES,
    });
    let kernel_md = k.map(|k| k.markdown()).unwrap_or_default();
    let md = markdown(&report, &kernel_md, &e.markdown());
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json_path = out_dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(out_dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("bench: wrote {}", json_path.display());
    Ok(())
}

fn markdown(report: &Value, kernel_md: &str, e2e_md: &str) -> String {
    let m = &report["meta"];
    let mut s = format!(
        "## inspector benchmark ({})\n\n\
         - machine: {} ({} CPUs), {} MiB RAM\n\
         - kernel: {}\n\
         - commit: {}{}\n\
         - date: {}\n\
         - load average at start / end: {} / {}\n\n",
        match (m["quick"] == true, m["configs_only"].as_str()) {
            (_, Some(_)) => "partial: INSPECTOR_BENCH_CONFIGS",
            (true, None) => "quick",
            (false, None) => "full",
        },
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["mem_mib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?"),
        if m["dirty"] == true {
            " (dirty: uncommitted changes)"
        } else {
            ""
        },
        m["date"].as_str().unwrap_or("?"),
        m["loadavg_start"].as_str().unwrap_or("?"),
        m["loadavg_end"].as_str().unwrap_or("?"),
    );
    s.push_str(kernel_md);
    s.push('\n');
    s.push_str(e2e_md);
    s.push_str("\n### Notes\n\n");
    for n in NOTES {
        s.push_str(&format!("- {n}\n"));
    }
    s
}

/// What `cmd` printed, trimmed, if it succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    crate::util::output(cmd).ok().map(|s| s.trim().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Machine, kernel, commit and date.
fn metadata(quick: bool) -> Result<Value> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let r = root();
    let git = |args: &[&str]| output(Command::new("git").arg("-C").arg(&r).args(args));
    let commit = git(&["rev-parse", "HEAD"]).context("git rev-parse HEAD failed")?;
    let dirty = git(&["status", "--porcelain"])
        .map(|s| !s.is_empty())
        .unwrap_or(true);
    Ok(json!({
        "quick": quick,
        "cpu_model": cpu_model,
        "cores": cores,
        "mem_mib": mem_mib,
        "kernel": output(Command::new("uname").arg("-r")).unwrap_or_default(),
        "commit": commit,
        "dirty": dirty,
        "date": output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).unwrap_or_default(),
        "loadavg_start": loadavg(),
    }))
}

/// Many idle flows need many file descriptors (children inherit this): the
/// soft limit goes up to `n`, or to the hard limit if that is lower (raising
/// the hard limit needs CAP_SYS_RESOURCE, which a container may lack).
fn raise_nofile(n: u64) -> u64 {
    let cur = getrlimit(Resource::Nofile);
    let (soft, hard) = (cur.current.unwrap_or(u64::MAX), cur.maximum);
    if soft >= n {
        return soft;
    }
    // No maximum (None) is unlimited: keep it so.
    let want = Rlimit {
        current: Some(n),
        maximum: hard.map(|h| h.max(n)),
    };
    if setrlimit(Resource::Nofile, want).is_ok() {
        return n;
    }
    let capped = hard.map_or(n, |h| h.min(n));
    let lower = Rlimit {
        current: Some(capped),
        maximum: hard,
    };
    if setrlimit(Resource::Nofile, lower).is_ok() {
        return capped;
    }
    soft
}
