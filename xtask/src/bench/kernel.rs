//! In-kernel cost per packet, with BPF_PROG_TEST_RUN.
//!
//! The eBPF object built with the `bench` feature (the one `inspector`
//! embeds plus the two baselines, `crate::ebpf`) is loaded here (maps
//! configured as `inspector attach` configures them: ports 25 and 587, the
//! default verb policy, the default or the monitor configuration), and three
//! XDP programs of it run on the same frames: `bench_pass` (returns
//! XDP_PASS), `bench_parse` (the inspector's header parsing, then pass) and
//! `inspector_xdp`. Ratios are taken against `bench_parse` on the same frame,
//! measured in the same round.
//!
//! With `repeat = N` the kernel runs the program N times on one buffer and
//! reports the average time per run. For a stateful case every run after the
//! first is a retransmission of the same segment: the inspector re-parses it
//! from its checkpoint (the same per-byte work as the first pass, plus a
//! comparison of the resulting state). The masked-verb case runs in monitor
//! mode, where the mask is computed but not stored, so that every repetition
//! sees the original bytes; the cost of the real store and checksum fix is
//! measured separately on fresh flows, one in-order run each.
//!
//! Every run's verdict must be XDP_PASS, the frame must come out as
//! expected and the counters must show the path that was meant (inspected,
//! re-inspected, nothing dropped), or the benchmark fails: a broken set-up
//! cannot produce figures.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use inspector_common::{
    config::{Config, CFG_MONITOR, CONFIG_MAP},
    counters::{Counter, COUNTERS_MAP},
    flow::{DEFAULT_MAX_FLOWS, FLOWS_MAP},
    policy::{entry_for, for_each_key, POLICY_MAP},
    ports::{port_slot, PORTS_MAP, PORT_WORDS},
    verbs::{key_of, PolicyEntry, VerbKey, DEFAULT_ALLOWED},
};
use serde_json::{json, Value};

use super::{
    frame::{checksums_ok, Segment, Session, TCP_ACK, TCP_PSH},
    interrupted,
    stats::{num, Summary},
};

pub const XDP_PASS: u32 = 2;
pub const BENCH_PASS: &str = "bench_pass";
pub const BENCH_PARSE: &str = "bench_parse";
pub const INSPECTOR_XDP: &str = "inspector_xdp";
const PROGRAMS: [&str; 3] = [BENCH_PASS, BENCH_PARSE, INSPECTOR_XDP];

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Measurements per program and case (each one BPF_PROG_TEST_RUN call).
    pub samples: usize,
    /// Runs per call.
    pub repeat: u32,
    /// Fresh flows for the in-order (repeat = 1) cross-check.
    pub fresh_flows: usize,
}

/// Loads the object with the maps written as `inspector attach` writes
/// them (`inspector_userspace::loader::{set_ports, set_policy,
/// set_config}` do the same with the same `inspector-common` functions),
/// and loads (verifies) the three programs.
pub fn load(object: &Path, flags: u32) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(FLOWS_MAP, DEFAULT_MAX_FLOWS)
        .load_file(object)
        .with_context(|| format!("loading the eBPF object {}", object.display()))?;
    // Ports 25 and 587.
    let mut words = [0u64; PORT_WORDS as usize];
    for p in [25u16, 587] {
        let (w, b) = port_slot(p);
        words[w as usize] |= b;
    }
    {
        let mut ports: Array<_, u64> =
            Array::try_from(ebpf.map_mut(PORTS_MAP).context("no port map")?)?;
        for (i, w) in words.iter().enumerate() {
            ports.set(i as u32, w, 0)?;
        }
    }
    // The default verb policy.
    let allowed: Vec<VerbKey> = DEFAULT_ALLOWED
        .iter()
        .map(|v| key_of(v.as_bytes()).context("a default verb is not a verb"))
        .collect::<Result<_>>()?;
    {
        let mut policy: BpfHashMap<_, VerbKey, PolicyEntry> =
            BpfHashMap::try_from(ebpf.map_mut(POLICY_MAP).context("no policy map")?)?;
        let mut err = None;
        for_each_key(&allowed, |k| {
            if let Some(e) = entry_for(&allowed, k) {
                if let Err(x) = policy.insert(k, e, 0) {
                    err = Some(x);
                }
            }
        });
        if let Some(e) = err {
            return Err(e).context("writing the policy map");
        }
    }
    {
        let mut cfg: Array<_, Config> =
            Array::try_from(ebpf.map_mut(CONFIG_MAP).context("no config map")?)?;
        cfg.set(0, Config { flags, _pad: 0 }, 0)?;
    }
    for name in PROGRAMS {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("the object has no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        p.load()
            .with_context(|| format!("loading (verifying) {name}"))?;
    }
    Ok(ebpf)
}

/// Every counter, summed over CPUs, in `Counter::ALL` order.
fn counters(ebpf: &Ebpf) -> Result<Vec<u64>> {
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(COUNTERS_MAP).context("no counter map")?)?;
    Counter::ALL
        .iter()
        .map(|c| Ok(arr.get(&(*c as u32), 0)?.iter().sum()))
        .collect()
}

/// Counter changes between two readings, by counter.
struct Delta(Vec<u64>);

impl Delta {
    fn between(before: &[u64], after: &[u64]) -> Delta {
        Delta(
            after
                .iter()
                .zip(before)
                .map(|(a, b)| a.wrapping_sub(*b))
                .collect(),
        )
    }

    fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    fn nonzero(&self) -> String {
        Counter::ALL
            .iter()
            .filter(|c| self.get(**c) != 0)
            .map(|c| format!("{}={}", c.name(), self.get(*c)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Counters that must not move when nothing is meant to be dropped or
/// passed uninspected.
const MUST_STAY_ZERO: &[Counter] = &[
    Counter::Midstream,
    Counter::OutOfOrderDrops,
    Counter::RetransConflicts,
    Counter::RetransUnverifiable,
    Counter::AwaitingReplyDrops,
    Counter::MaskOverflowDrops,
    Counter::Dropped,
    Counter::Malformed,
    Counter::Fragments,
];

/// One BPF_PROG_TEST_RUN call.
struct Run {
    /// The kernel's average per run, in ns (an integer: the kernel divides
    /// the total by `repeat` and truncates).
    kernel_ns: f64,
    /// Wall time of the whole syscall divided by `repeat`.
    wall_ns: f64,
    data_out: Vec<u8>,
}

fn test_run(ebpf: &Ebpf, prog: &str, frame: &[u8], repeat: u32) -> Result<Run> {
    let p: &Xdp = ebpf
        .program(prog)
        .with_context(|| format!("no program {prog}"))?
        .try_into()?;
    let mut out = vec![0u8; frame.len() + 256];
    let t0 = Instant::now();
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
    let wall = t0.elapsed();
    ensure!(
        r.return_value == XDP_PASS,
        "{prog} returned {} on a {}-byte frame, XDP_PASS ({XDP_PASS}) was expected",
        r.return_value,
        frame.len()
    );
    out.truncate(r.data_size_out as usize);
    Ok(Run {
        kernel_ns: r.duration.as_nanos() as f64,
        wall_ns: wall.as_nanos() as f64 / repeat as f64,
        data_out: out,
    })
}

/// Runs `frame` once through the inspector and checks that it passed
/// unchanged and moved no drop counter; returns the counter changes.
fn step(ebpf: &Ebpf, frame: &[u8], what: &str) -> Result<Delta> {
    let before = counters(ebpf)?;
    let r = test_run(ebpf, INSPECTOR_XDP, frame, 1).with_context(|| what.to_string())?;
    let d = Delta::between(&before, &counters(ebpf)?);
    ensure!(r.data_out == frame, "{what}: the frame was changed");
    for c in MUST_STAY_ZERO {
        ensure!(
            d.get(*c) == 0,
            "{what}: counter {} moved ({})",
            c.name(),
            d.nonzero()
        );
    }
    Ok(d)
}

/// SYN, SYN-ACK, greeting: a flow in the command state.
fn open_flow(ebpf: &Ebpf, s: &mut Session) -> Result<()> {
    let d = step(ebpf, &s.syn(), "client SYN")?;
    ensure!(
        d.get(Counter::FlowsCreated) == 1,
        "the SYN created no flow ({})",
        d.nonzero()
    );
    step(ebpf, &s.syn_ack(), "server SYN-ACK")?;
    let d = step(ebpf, &s.server(b"220 x\r\n"), "server greeting")?;
    ensure!(
        d.get(Counter::PacketsInspected) == 1,
        "the greeting was not inspected ({})",
        d.nonzero()
    );
    Ok(())
}

/// A measured case.
struct Case {
    id: &'static str,
    name: &'static str,
    /// Where the flow is and what repetition means.
    path: &'static str,
    monitor: bool,
    frame: Vec<u8>,
    payload: usize,
    stateful: bool,
}

fn pad_line(prefix: &str, suffix: &str, len: usize) -> Vec<u8> {
    let fill = len
        .checked_sub(prefix.len() + suffix.len())
        .expect("line too short");
    let mut l = prefix.as_bytes().to_vec();
    l.extend(std::iter::repeat_n(b'x', fill));
    l.extend_from_slice(suffix.as_bytes());
    l
}

/// `RCPT TO:<...@example.com>\r\n` of exactly `len` bytes.
fn rcpt_line(len: usize) -> Vec<u8> {
    pad_line("RCPT TO:<", "@example.com>\r\n", len)
}

/// Pipelined allowed commands filling exactly `len` bytes, and their count.
fn pipelined(len: usize) -> (Vec<u8>, u64) {
    let mut p = Vec::new();
    let mut n = 0u64;
    let mut i = 0;
    loop {
        let line: Vec<u8> = match i % 8 {
            0 => b"MAIL FROM:<sender@example.org>\r\n".to_vec(),
            6 => b"NOOP\r\n".to_vec(),
            7 => b"RSET\r\n".to_vec(),
            _ => format!("RCPT TO:<rcpt{i:04}@example.com>\r\n").into_bytes(),
        };
        if p.len() + line.len() + 40 > len {
            break;
        }
        p.extend_from_slice(&line);
        n += 1;
        i += 1;
    }
    p.extend(rcpt_line(len - p.len()));
    (p, n + 1)
}

/// Message body text of exactly `len` bytes (no end-of-data line).
fn body(len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    let mut i = 0;
    while p.len() + 80 < len {
        p.extend(
            format!("Line {i:03} of the message body: plain text, as mail mostly is.\r\n")
                .into_bytes(),
        );
        i += 1;
    }
    p.extend(pad_line("Last line ", "\r\n", len - p.len()));
    p
}

/// Builds every case's flow (on `enforcing` or `monitor`) and returns the
/// cases with their measured frames, after checking the first (in-order)
/// and the second (retransmission) run of each.
fn prepare(enforcing: &Ebpf, monitor: &Ebpf) -> Result<Vec<Case>> {
    let mut cases = Vec::new();

    // (a) Not SMTP: port 80.
    let http = pad_line(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: ",
        "\r\n\r\n",
        100,
    );
    let frame = Segment {
        v6: false,
        from_client: true,
        client_port: 40080,
        server_port: 80,
        seq: 5000,
        ack: 9000,
        flags: TCP_PSH | TCP_ACK,
        payload: &http,
    }
    .frame();
    let d = step(enforcing, &frame, "(a) port 80")?;
    ensure!(
        d.get(Counter::PacketsSeen) == 1 && d.get(Counter::PacketsInspected) == 0,
        "(a) a port-80 segment was inspected ({})",
        d.nonzero()
    );
    cases.push(Case {
        id: "a",
        name: "non-SMTP TCP (port 80), 100 B payload",
        path: "headers parsed, port not inspected",
        monitor: false,
        frame,
        payload: http.len(),
        stateful: false,
    });

    // (b), (e), (f): one short command segment.
    struct Cmd {
        id: &'static str,
        name: &'static str,
        v6: bool,
        monitor: bool,
        port: u16,
        payload: Vec<u8>,
        commands: u64,
        masked: u64,
    }
    let mut starttls = b"STARTTLS\r\n".to_vec();
    starttls.extend(rcpt_line(30));
    let (pipe, pipe_n) = pipelined(1400);
    let cmds = [
        Cmd {
            id: "b",
            name: "SMTP command, 40 B (RCPT TO)",
            v6: false,
            monitor: false,
            port: 40001,
            payload: rcpt_line(40),
            commands: 1,
            masked: 0,
        },
        Cmd {
            id: "c",
            name: "pipelined allowed commands, 1400 B",
            v6: false,
            monitor: false,
            port: 40002,
            payload: pipe,
            commands: pipe_n,
            masked: 0,
        },
        Cmd {
            id: "e",
            name: "masked verb, 40 B (STARTTLS + RCPT), monitor mode",
            v6: false,
            monitor: true,
            port: 40004,
            payload: starttls,
            commands: 2,
            masked: 1,
        },
        Cmd {
            id: "f",
            name: "SMTP command over IPv6, 40 B (RCPT TO)",
            v6: true,
            monitor: false,
            port: 40005,
            payload: rcpt_line(40),
            commands: 1,
            masked: 0,
        },
    ];
    for c in cmds {
        let ebpf = if c.monitor { monitor } else { enforcing };
        let mut s = Session::new(c.v6, c.port, 25);
        open_flow(ebpf, &mut s).with_context(|| format!("({}) opening its flow", c.id))?;
        let frame = s.client_peek(&c.payload);
        let d = step(ebpf, &frame, &format!("({}) first run", c.id))?;
        ensure!(
            d.get(Counter::PacketsInspected) == 1
                && d.get(Counter::CommandsSeen) == c.commands
                && d.get(Counter::CommandsMasked) == c.masked,
            "({}) first run: expected {} commands seen, {} masked ({})",
            c.id,
            c.commands,
            c.masked,
            d.nonzero()
        );
        let d = step(ebpf, &frame, &format!("({}) second run", c.id))?;
        ensure!(
            d.get(Counter::RetransReinspected) == 1,
            "({}) the repeated segment was not re-inspected as a retransmission ({})",
            c.id,
            d.nonzero()
        );
        cases.push(Case {
            id: c.id,
            name: c.name,
            path: if c.monitor {
                "command state; runs after the first re-parse from the checkpoint; mask computed, not stored"
            } else {
                "command state; runs after the first re-parse from the checkpoint"
            },
            monitor: c.monitor,
            payload: c.payload.len(),
            frame,
            stateful: true,
        });
    }

    // (d) A body segment in the DATA state.
    let mut s = Session::new(false, 40003, 25);
    open_flow(enforcing, &mut s).context("(d) opening its flow")?;
    step(
        enforcing,
        &s.client(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"),
        "(d) MAIL, RCPT, DATA",
    )?;
    step(
        enforcing,
        &s.server(b"250 ok\r\n250 ok\r\n354 go\r\n"),
        "(d) 250, 250, 354",
    )?;
    let text = body(1448);
    let frame = s.client_peek(&text);
    let d = step(enforcing, &frame, "(d) first run")?;
    ensure!(
        d.get(Counter::PacketsInspected) == 1
            && d.get(Counter::Bodies) == 1
            && d.get(Counter::CommandsSeen) == 0,
        "(d) body segment: expected a body started, no command ({})",
        d.nonzero()
    );
    let d = step(enforcing, &frame, "(d) second run")?;
    ensure!(
        d.get(Counter::RetransReinspected) == 1,
        "(d) the repeated body segment was not re-inspected ({})",
        d.nonzero()
    );
    cases.push(Case {
        id: "d",
        name: "message body segment in DATA, 1448 B",
        path: "body state; runs after the first re-parse from the checkpoint",
        monitor: false,
        payload: text.len(),
        frame,
        stateful: true,
    });
    cases.sort_by_key(|c| c.id);
    Ok(cases)
}

/// Results of one case.
pub struct CaseResult {
    pub id: &'static str,
    pub name: &'static str,
    pub path: &'static str,
    pub mode: &'static str,
    pub frame_bytes: usize,
    pub payload_bytes: usize,
    pub inspector: Summary,
    pub inspector_wall: Summary,
    pub parse: Summary,
    pub pass: Summary,
    pub ratio_to_parse: Summary,
    pub ratio_to_pass: Summary,
    pub extra_ns: Summary,
    pub bytes_per_ns: Option<Summary>,
}

/// The in-order cross-check: a fresh flow per sample, one run each.
pub struct FreshResult {
    pub id: &'static str,
    pub name: &'static str,
    pub payload_bytes: usize,
    pub inspector: Summary,
    pub parse: Summary,
    pub extra_ns: Summary,
}

pub struct Report {
    pub params: Params,
    pub cases: Vec<CaseResult>,
    pub fresh: Vec<FreshResult>,
}

pub fn run(object: &Path, p: Params) -> Result<Report> {
    let enforcing = load(object, 0)?;
    let monitor = load(object, CFG_MONITOR)?;
    let cases = prepare(&enforcing, &monitor)?;

    // samples[case][program] = (kernel ns, wall ns) per round.
    let mut samples = vec![vec![Vec::<(f64, f64)>::new(); PROGRAMS.len()]; cases.len()];
    for round in 0..p.samples {
        for (ci, case) in cases.iter().enumerate() {
            if interrupted() {
                bail!("interrupted");
            }
            let ebpf = if case.monitor { &monitor } else { &enforcing };
            // Rotate the order of the programs, so that none always runs
            // first (cold) or last.
            for k in 0..PROGRAMS.len() {
                let pi = (k + round) % PROGRAMS.len();
                let prog = PROGRAMS[pi];
                let before = counters(ebpf)?;
                let r = test_run(ebpf, prog, &case.frame, p.repeat)
                    .with_context(|| format!("case ({})", case.id))?;
                ensure!(
                    r.data_out == case.frame,
                    "case ({}): {prog} changed the frame",
                    case.id
                );
                let d = Delta::between(&before, &counters(ebpf)?);
                if prog == INSPECTOR_XDP {
                    check_measured(case, &d, p.repeat)?;
                } else {
                    ensure!(
                        d.0.iter().all(|x| *x == 0),
                        "{prog} moved the inspector's counters"
                    );
                }
                samples[ci][pi].push((r.kernel_ns, r.wall_ns));
            }
        }
    }

    let results = cases
        .iter()
        .zip(&samples)
        .map(|(case, s)| {
            let k = |pi: usize| s[pi].iter().map(|x| x.0).collect::<Vec<_>>();
            let (pass, parse, insp) = (k(0), k(1), k(2));
            let wall: Vec<f64> = s[2].iter().map(|x| x.1).collect();
            let ratio: Vec<f64> = insp.iter().zip(&parse).map(|(i, b)| i / b).collect();
            let ratio_pass: Vec<f64> = insp.iter().zip(&pass).map(|(i, b)| i / b).collect();
            let extra: Vec<f64> = insp.iter().zip(&parse).map(|(i, b)| i - b).collect();
            let bpn: Vec<f64> = insp.iter().map(|i| case.payload as f64 / i).collect();
            CaseResult {
                id: case.id,
                name: case.name,
                path: case.path,
                mode: if case.monitor { "monitor" } else { "enforcing" },
                frame_bytes: case.frame.len(),
                payload_bytes: case.payload,
                inspector: Summary::of(&insp),
                inspector_wall: Summary::of(&wall),
                parse: Summary::of(&parse),
                pass: Summary::of(&pass),
                ratio_to_parse: Summary::of(&ratio),
                ratio_to_pass: Summary::of(&ratio_pass),
                extra_ns: Summary::of(&extra),
                bytes_per_ns: case.stateful.then(|| Summary::of(&bpn)),
            }
        })
        .collect();

    let fresh = fresh_flows(&enforcing, p.fresh_flows)?;
    Ok(Report {
        params: p,
        cases: results,
        fresh,
    })
}

/// What the counters must show after `repeat` runs of a case.
fn check_measured(case: &Case, d: &Delta, repeat: u32) -> Result<()> {
    let n = repeat as u64;
    for c in MUST_STAY_ZERO {
        ensure!(
            d.get(*c) == 0,
            "case ({}): counter {} moved during the measurement ({})",
            case.id,
            c.name(),
            d.nonzero()
        );
    }
    ensure!(
        d.get(Counter::PacketsSeen) == n,
        "case ({}): {} packets seen for {n} runs",
        case.id,
        d.get(Counter::PacketsSeen)
    );
    if case.stateful {
        ensure!(
            d.get(Counter::PacketsInspected) == n
                && d.get(Counter::BytesInspected) == n * case.payload as u64
                && d.get(Counter::RetransReinspected) == n,
            "case ({}): expected {n} inspected and re-inspected runs ({})",
            case.id,
            d.nonzero()
        );
    } else {
        ensure!(
            d.get(Counter::PacketsInspected) == 0,
            "case ({}): inspected ({})",
            case.id,
            d.nonzero()
        );
    }
    Ok(())
}

/// In-order cost without the retransmission shortcut of `repeat`: a fresh
/// flow per sample (SYN, SYN-ACK, greeting), then the measured segment run
/// once, and `bench_parse` once on the same frame. Includes the kernel's
/// per-call timer overhead, which the `bench_parse` figure also has.
fn fresh_flows(ebpf: &Ebpf, n: usize) -> Result<Vec<FreshResult>> {
    let mut starttls = b"STARTTLS\r\n".to_vec();
    starttls.extend(rcpt_line(30));
    let kinds: [(&str, &str, Vec<u8>, bool); 2] = [
        (
            "b1",
            "(b) in order: 40 B command, fresh flow, repeat 1",
            rcpt_line(40),
            false,
        ),
        (
            "e1",
            "(e) in order, enforcing: STARTTLS masked in place + checksum fix, fresh flow, repeat 1",
            starttls,
            true,
        ),
    ];
    let mut out = Vec::new();
    for (ki, (id, name, payload, masks)) in kinds.into_iter().enumerate() {
        let mut insp = Vec::with_capacity(n);
        let mut parse = Vec::with_capacity(n);
        for i in 0..n {
            if interrupted() {
                bail!("interrupted");
            }
            let port = 20000 + (ki * 10000 + i) as u16;
            let mut s = Session::new(false, port, 25);
            open_flow(ebpf, &mut s)?;
            let frame = s.client_peek(&payload);
            let before = counters(ebpf)?;
            let r = test_run(ebpf, INSPECTOR_XDP, &frame, 1)?;
            let d = Delta::between(&before, &counters(ebpf)?);
            for c in MUST_STAY_ZERO {
                ensure!(d.get(*c) == 0, "fresh flow ({id}): {}", d.nonzero());
            }
            ensure!(
                d.get(Counter::PacketsInspected) == 1 && d.get(Counter::RetransReinspected) == 0,
                "fresh flow ({id}): not an in-order inspection ({})",
                d.nonzero()
            );
            if masks {
                let off = r.data_out.len() - payload.len();
                ensure!(
                    &r.data_out[off..off + 8] == b"XXXXXXXX"
                        && r.data_out[off + 8..] == payload[8..]
                        && d.get(Counter::BytesMasked) == 8,
                    "fresh flow ({id}): STARTTLS was not masked as expected ({})",
                    d.nonzero()
                );
                ensure!(
                    checksums_ok(&r.data_out),
                    "fresh flow ({id}): the masked frame has a wrong checksum"
                );
            } else {
                ensure!(r.data_out == frame, "fresh flow ({id}): frame changed");
            }
            insp.push(r.kernel_ns);
            parse.push(test_run(ebpf, BENCH_PARSE, &frame, 1)?.kernel_ns);
        }
        let extra: Vec<f64> = insp.iter().zip(&parse).map(|(a, b)| a - b).collect();
        out.push(FreshResult {
            id,
            name,
            payload_bytes: payload.len(),
            inspector: Summary::of(&insp),
            parse: Summary::of(&parse),
            extra_ns: Summary::of(&extra),
        });
    }
    Ok(out)
}

impl Report {
    pub fn json(&self) -> Value {
        let cases: Vec<Value> = self
            .cases
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "name": c.name,
                    "path": c.path,
                    "mode": c.mode,
                    "frame_bytes": c.frame_bytes,
                    "payload_bytes": c.payload_bytes,
                    "inspector_ns": c.inspector.json(),
                    "inspector_wall_ns": c.inspector_wall.json(),
                    "bench_parse_ns": c.parse.json(),
                    "bench_pass_ns": c.pass.json(),
                    "ratio_to_bench_parse": c.ratio_to_parse.json(),
                    "ratio_to_bench_pass": c.ratio_to_pass.json(),
                    "extra_ns_over_bench_parse": c.extra_ns.json(),
                    "payload_bytes_per_ns": c.bytes_per_ns.map(|s| s.json()).unwrap_or(Value::Null),
                    "extra_ns_per_payload_byte": if c.payload_bytes > 0 && c.bytes_per_ns.is_some() {
                        num(c.extra_ns.median / c.payload_bytes as f64)
                    } else {
                        Value::Null
                    },
                })
            })
            .collect();
        let fresh: Vec<Value> = self
            .fresh
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "name": f.name,
                    "payload_bytes": f.payload_bytes,
                    "inspector_ns": f.inspector.json(),
                    "bench_parse_ns": f.parse.json(),
                    "extra_ns_over_bench_parse": f.extra_ns.json(),
                })
            })
            .collect();
        json!({
            "method": "BPF_PROG_TEST_RUN (XDP), kernel-reported average ns per run",
            "samples": self.params.samples,
            "repeat": self.params.repeat,
            "fresh_flows": self.params.fresh_flows,
            "cases": cases,
            "in_order_fresh_flows": fresh,
        })
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "### In-kernel cost per packet (BPF_PROG_TEST_RUN, {} samples x repeat {}; median [min–max])\n\n",
            self.params.samples, self.params.repeat
        ));
        s.push_str("| case | payload B | inspector_xdp ns | bench_parse ns | bench_pass ns | ratio to bench_parse | extra ns | payload B/ns |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.cases {
            s.push_str(&format!(
                "| ({}) {} | {} | {} | {} | {} | {} | {} | {} |\n",
                c.id,
                c.name,
                c.payload_bytes,
                c.inspector.cell(0),
                c.parse.cell(0),
                c.pass.cell(0),
                c.ratio_to_parse.cell(2),
                c.extra_ns.cell(0),
                c.bytes_per_ns
                    .map(|b| b.cell(2))
                    .unwrap_or_else(|| "-".into()),
            ));
        }
        s.push_str(&format!(
            "\nIn order, no retransmission shortcut ({} fresh flows, one run each; median [p25–p75]):\n\n",
            self.params.fresh_flows
        ));
        s.push_str("| case | payload B | inspector_xdp ns | bench_parse ns (same call overhead) | extra ns |\n");
        s.push_str("|---|---:|---:|---:|---:|\n");
        for f in &self.fresh {
            let q = |x: &Summary| format!("{:.0} [{:.0}–{:.0}]", x.median, x.p25, x.p75);
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                f.name,
                f.payload_bytes,
                q(&f.inspector),
                q(&f.parse),
                q(&f.extra_ns)
            ));
        }
        s
    }
}

/// How long the kernel part takes at most, roughly, for a progress line.
pub fn estimate(p: Params) -> Duration {
    // ~3 us average per inspector run over the six cases, baselines cheap.
    let per_round = 6.0 * p.repeat as f64 * 4e-6;
    Duration::from_secs_f64(per_round * p.samples as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes_are_exact() {
        assert_eq!(rcpt_line(40).len(), 40);
        assert!(rcpt_line(40).ends_with(b"@example.com>\r\n"));
        let (p, n) = pipelined(1400);
        assert_eq!(p.len(), 1400);
        assert_eq!(
            p.windows(2).filter(|w| w == b"\r\n").count() as u64,
            n,
            "one CRLF per command"
        );
        let b = body(1448);
        assert_eq!(b.len(), 1448);
        assert!(!b.windows(5).any(|w| w == b"\r\n.\r\n"));
        assert!(b.ends_with(b"\r\n"));
    }
}
