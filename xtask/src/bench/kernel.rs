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

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use aya::maps::Array;
use inspector_common::{
    config::{Config, CFG_MONITOR, CONFIG_MAP},
    counters::Counter,
    verbs::DEFAULT_ALLOWED,
};
use inspector_testkit::{
    frame::{checksums_ok, Frame, Ipv4, Tcp},
    program::{self, v4, v6, Counters, Hook, Loaded, Session, Verdict, XDP_PASS},
};
use serde_json::{json, Value};

use super::{
    interrupted,
    stats::{num, Summary},
};

pub const BENCH_PASS: &str = "bench_pass";
pub const BENCH_PARSE: &str = "bench_parse";
/// The flow-tracking baseline, run end to end only (`e2e.rs`). Like every
/// program name the profiling pass looks up, at most 15 bytes: the kernel
/// keeps no more.
pub const BENCH_TRACK: &str = "bench_track";
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
/// them (the kit's [`program::open`]: ports 25 and 587, the default verb
/// policy, `flags`), and loads (verifies) the three programs.
pub fn load(object: &[u8], flags: u32) -> Result<Loaded> {
    let mut ebpf = program::open(object, &[25, 587], flags, DEFAULT_ALLOWED)?;
    // Every flow here comes from one client address: the fresh-flow rows
    // alone open 2 x `fresh_flows` of them, past the default per-client cap
    // of admission control (whose refusal would fail the run).
    let mut cfg: Array<_, Config> =
        Array::try_from(ebpf.map_mut(CONFIG_MAP).context("no config map")?)?;
    cfg.set(
        0,
        Config {
            flags,
            max_flows_per_client: 1 << 20,
        },
        0,
    )?;
    let mut l = Loaded::from_ebpf(ebpf, Hook::Xdp)?;
    for name in [BENCH_PASS, BENCH_PARSE] {
        l.load_xdp(name)?;
    }
    Ok(l)
}

/// The counters that moved, for messages.
fn moved(d: &Counters) -> String {
    d.nonzero()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counters that must not move when nothing is meant to be dropped or
/// passed uninspected.
const MUST_STAY_ZERO: &[Counter] = &[
    Counter::Midstream,
    Counter::Spoofed,
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

fn test_run(l: &Loaded, prog: &str, frame: &[u8], repeat: u32) -> Result<Run> {
    let r = l.test_run(prog, frame, repeat)?;
    ensure!(
        r.return_value == XDP_PASS,
        "{prog} returned {} on a {}-byte frame, XDP_PASS ({XDP_PASS}) was expected",
        r.return_value,
        frame.len()
    );
    Ok(Run {
        kernel_ns: r.duration.as_nanos() as f64,
        wall_ns: r.wall.as_nanos() as f64 / repeat as f64,
        data_out: r.data_out,
    })
}

/// Fails if a counter of [`MUST_STAY_ZERO`] moved.
fn none_dropped(d: &Counters, what: &str) -> Result<()> {
    for c in MUST_STAY_ZERO {
        ensure!(
            d.count(*c) == 0,
            "{what}: counter {} moved ({})",
            c.name(),
            moved(d)
        );
    }
    Ok(())
}

/// Runs `frame` once through the inspector and checks that it passed
/// unchanged and moved no drop counter; returns the counter changes.
fn step(l: &Loaded, frame: &[u8], what: &str) -> Result<Counters> {
    let o = l.run(frame);
    ensure!(
        o.verdict == Verdict::Pass && o.data_out == frame,
        "{what}: the frame was dropped or changed"
    );
    none_dropped(&o.delta, what)?;
    Ok(o.delta)
}

/// A flow to port 25 from `port` after SYN, SYN-ACK, ACK and the greeting
/// (the kit's [`Session::open`], which checks that each passed unchanged),
/// in the command state.
fn open_flow(l: &Loaded, ipv6: bool, port: u16) -> Result<Session<'_>> {
    let before = l.counters();
    let mut s = Session::new(l, if ipv6 { v6() } else { v4() }, port, 25);
    s.open();
    let d = l.counters().since(&before);
    none_dropped(&d, "opening a flow")?;
    ensure!(
        d.count(Counter::FlowsCreated) == 1 && d.count(Counter::PacketsInspected) == 1,
        "the SYN created no flow or the greeting was not inspected ({})",
        moved(&d)
    );
    Ok(s)
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

/// A reply to EHLO as Postfix's `smtpd` sends it by default.
fn ehlo_reply() -> Vec<u8> {
    [
        "250-mail.example.com",
        "250-PIPELINING",
        "250-SIZE 10240000",
        "250-VRFY",
        "250-ETRN",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250-DSN",
        "250-SMTPUTF8",
        "250 CHUNKING",
    ]
    .iter()
    .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
    .collect()
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
fn prepare(enforcing: &Loaded, monitor: &Loaded) -> Result<Vec<Case>> {
    let mut cases = Vec::new();

    // (a) Not SMTP: port 80.
    let http = pad_line(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: ",
        "\r\n\r\n",
        100,
    );
    let frame = Frame::ipv4(Ipv4::tcp(Tcp::new(40080, 80).payload(&http))).bytes();
    let d = step(enforcing, &frame, "(a) port 80")?;
    ensure!(
        d.count(Counter::PacketsSeen) == 1 && d.count(Counter::PacketsInspected) == 0,
        "(a) a port-80 segment was inspected ({})",
        moved(&d)
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
            id: "h",
            name: "SMTP command, 27 B (RCPT TO, its end off a word boundary)",
            v6: false,
            monitor: false,
            port: 40008,
            payload: rcpt_line(27),
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
        let s = open_flow(ebpf, c.v6, c.port)
            .with_context(|| format!("({}) opening its flow", c.id))?;
        let frame = s.client_frame(&c.payload);
        let d = step(ebpf, &frame, &format!("({}) first run", c.id))?;
        ensure!(
            d.count(Counter::PacketsInspected) == 1
                && d.count(Counter::CommandsSeen) == c.commands
                && d.count(Counter::CommandsMasked) == c.masked,
            "({}) first run: expected {} commands seen, {} masked ({})",
            c.id,
            c.commands,
            c.masked,
            moved(&d)
        );
        let d = step(ebpf, &frame, &format!("({}) second run", c.id))?;
        ensure!(
            d.count(Counter::RetransReinspected) == 1,
            "({}) the repeated segment was not re-inspected as a retransmission ({})",
            c.id,
            moved(&d)
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

    // (d) A body segment in the DATA state, past the message's header
    // section (the header-line rule reads header lines, which the body
    // scan skips); (g) the same bytes as the first segment after 354, read
    // as header lines.
    for (id, port, headers, name, path) in [
        (
            "d",
            40003,
            &b"Subject: bench\r\n\r\n"[..],
            "message body segment in DATA, 1448 B",
            "body state past the header section; runs after the first re-parse from the checkpoint",
        ),
        (
            "g",
            40007,
            &b""[..],
            "message header section in DATA, 1448 B",
            "header lines (line-length rule); runs after the first re-parse from the checkpoint",
        ),
    ] {
        let mut s = open_flow(enforcing, false, port)
            .with_context(|| format!("({id}) opening its flow"))?;
        let cmds = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
        step(enforcing, &s.client_frame(cmds), "MAIL, RCPT, DATA")?;
        s.cseq = s.cseq.wrapping_add(cmds.len() as u32);
        let o = s.server(b"250 ok\r\n250 ok\r\n354 go\r\n");
        none_dropped(&o.delta, "250, 250, 354")?;
        if !headers.is_empty() {
            step(enforcing, &s.client_frame(headers), "the header section")?;
            s.cseq = s.cseq.wrapping_add(headers.len() as u32);
        }
        let text = body(1448);
        let frame = s.client_frame(&text);
        let d = step(enforcing, &frame, "first run")?;
        let bodies = if headers.is_empty() { 1 } else { 0 };
        ensure!(
            d.count(Counter::PacketsInspected) == 1
                && d.count(Counter::Bodies) == bodies
                && d.count(Counter::CommandsSeen) == 0,
            "({id}) body segment: expected {bodies} body started, no command ({})",
            moved(&d)
        );
        let d = step(enforcing, &frame, "second run")?;
        ensure!(
            d.count(Counter::RetransReinspected) == 1,
            "({id}) the repeated body segment was not re-inspected ({})",
            moved(&d)
        );
        cases.push(Case {
            id,
            name,
            path,
            monitor: false,
            payload: text.len(),
            frame,
            stateful: true,
        });
    }
    // (i) The server's reply to EHLO, as Postfix sends it: what every
    // session costs on the server's side (each keyword checked against the
    // policy, the rest of each line read). Its CHUNKING is masked (the
    // default policy denies BDAT): monitor mode, as (e), so that every run
    // sees the original bytes.
    {
        let mut s = open_flow(monitor, false, 40009).context("(i) opening its flow")?;
        let ehlo = b"EHLO client.example.org\r\n";
        step(monitor, &s.client_frame(ehlo), "EHLO")?;
        s.cseq = s.cseq.wrapping_add(ehlo.len() as u32);
        let reply = ehlo_reply();
        let frame = s.server_frame(&reply);
        let d = step(monitor, &frame, "(i) first run")?;
        ensure!(
            d.count(Counter::PacketsInspected) == 1 && d.count(Counter::EhloKeywordsMasked) == 1,
            "(i) EHLO reply: expected inspected, CHUNKING masked ({})",
            moved(&d)
        );
        let d = step(monitor, &frame, "(i) second run")?;
        ensure!(
            d.count(Counter::RetransReinspected) == 1,
            "(i) the repeated reply was not re-inspected ({})",
            moved(&d)
        );
        cases.push(Case {
            id: "i",
            name: "server's EHLO reply, 10 lines, CHUNKING masked, monitor mode",
            path: "reply state; runs after the first re-parse from the checkpoint; mask computed, not stored",
            monitor: true,
            payload: reply.len(),
            frame,
            stateful: true,
        });
    }
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

impl FreshResult {
    /// The summaries of one row's samples: the inspector's, `bench_parse`'s
    /// on the same frames, and the difference run by run.
    fn of(
        id: &'static str,
        name: &'static str,
        payload_bytes: usize,
        insp: &[f64],
        parse: &[f64],
    ) -> FreshResult {
        let extra: Vec<f64> = insp.iter().zip(parse).map(|(a, b)| a - b).collect();
        FreshResult {
            id,
            name,
            payload_bytes,
            inspector: Summary::of(insp),
            parse: Summary::of(parse),
            extra_ns: Summary::of(&extra),
        }
    }
}

pub struct Report {
    pub params: Params,
    pub cases: Vec<CaseResult>,
    pub fresh: Vec<FreshResult>,
}

pub fn run(object: &[u8], p: Params) -> Result<Report> {
    let enforcing = load(object, 0)?;
    let monitor = load(object, CFG_MONITOR)?;
    let mut cases = prepare(&enforcing, &monitor)?;
    // `INSPECTOR_BENCH_CASES=cd` measures cases (c) and (d) only, and no
    // fresh flows (to profile one case, for instance).
    let only = std::env::var("INSPECTOR_BENCH_CASES").ok();
    if let Some(only) = &only {
        cases.retain(|c| only.contains(c.id));
    }

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
                let before = ebpf.counters();
                let r = test_run(ebpf, prog, &case.frame, p.repeat)
                    .with_context(|| format!("case ({})", case.id))?;
                ensure!(
                    r.data_out == case.frame,
                    "case ({}): {prog} changed the frame",
                    case.id
                );
                let d = ebpf.counters().since(&before);
                if prog == INSPECTOR_XDP {
                    check_measured(case, &d, p.repeat)?;
                } else {
                    ensure!(
                        d.nonzero().is_empty(),
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

    let fresh = if only.is_some() {
        Vec::new()
    } else {
        let mut f = fresh_flows(&enforcing, p.fresh_flows)?;
        f.extend(fresh_handshakes(&enforcing, p.fresh_flows)?);
        f
    };
    Ok(Report {
        params: p,
        cases: results,
        fresh,
    })
}

/// What the counters must show after `repeat` runs of a case.
fn check_measured(case: &Case, d: &Counters, repeat: u32) -> Result<()> {
    let n = repeat as u64;
    none_dropped(d, &format!("case ({}), during the measurement", case.id))?;
    ensure!(
        d.count(Counter::PacketsSeen) == n,
        "case ({}): {} packets seen for {n} runs",
        case.id,
        d.count(Counter::PacketsSeen)
    );
    if case.stateful {
        ensure!(
            d.count(Counter::PacketsInspected) == n
                && d.count(Counter::BytesInspected) == n * case.payload as u64
                && d.count(Counter::RetransReinspected) == n,
            "case ({}): expected {n} inspected and re-inspected runs ({})",
            case.id,
            moved(d)
        );
    } else {
        ensure!(
            d.count(Counter::PacketsInspected) == 0,
            "case ({}): inspected ({})",
            case.id,
            moved(d)
        );
    }
    Ok(())
}

/// In-order cost without the retransmission shortcut of `repeat`: a fresh
/// flow per sample (SYN, SYN-ACK, greeting), then the measured segment run
/// once, and `bench_parse` once on the same frame. Includes the kernel's
/// per-call timer overhead, which the `bench_parse` figure also has.
fn fresh_flows(ebpf: &Loaded, n: usize) -> Result<Vec<FreshResult>> {
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
            let s = open_flow(ebpf, false, port)?;
            let frame = s.client_frame(&payload);
            let before = ebpf.counters();
            let r = test_run(ebpf, INSPECTOR_XDP, &frame, 1)?;
            let d = ebpf.counters().since(&before);
            none_dropped(&d, &format!("fresh flow ({id})"))?;
            ensure!(
                d.count(Counter::PacketsInspected) == 1
                    && d.count(Counter::RetransReinspected) == 0,
                "fresh flow ({id}): not an in-order inspection ({})",
                moved(&d)
            );
            if masks {
                let off = r.data_out.len() - payload.len();
                ensure!(
                    &r.data_out[off..off + 8] == b"XXXXXXXX"
                        && r.data_out[off + 8..] == payload[8..]
                        && d.count(Counter::BytesMasked) == 8,
                    "fresh flow ({id}): STARTTLS was not masked as expected ({})",
                    moved(&d)
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
        out.push(FreshResult::of(id, name, payload.len(), &insp, &parse));
    }
    Ok(out)
}

/// What opening a flow costs, packet by packet (rows k1-k3): the SYN, the
/// server's SYN-ACK and the handshake's last ACK (which creates the flow
/// entry) of `n` fresh flows, each run once. A test run arrives on the
/// loopback device, which the server-side check believes without a route
/// lookup: on a gateway the SYN-ACK also pays that lookup.
fn fresh_handshakes(ebpf: &Loaded, n: usize) -> Result<Vec<FreshResult>> {
    let names = [
        ("k1", "(k1) a new flow's SYN, repeat 1"),
        (
            "k2",
            "(k2) the server's SYN-ACK, repeat 1 (no route lookup: see above)",
        ),
        (
            "k3",
            "(k3) the handshake's last ACK (the flow entry created), repeat 1",
        ),
    ];
    let mut insp: [Vec<f64>; 3] = core::array::from_fn(|_| Vec::with_capacity(n));
    let mut parse: [Vec<f64>; 3] = core::array::from_fn(|_| Vec::with_capacity(n));
    for i in 0..n {
        if interrupted() {
            bail!("interrupted");
        }
        let s = Session::new(ebpf, v4(), 33000 + i as u16, 25);
        let before = ebpf.counters();
        for (k, (what, frame)) in s.handshake_frames().iter().enumerate() {
            let r = test_run(ebpf, INSPECTOR_XDP, frame, 1)?;
            ensure!(r.data_out == *frame, "handshake: the {what} was changed");
            insp[k].push(r.kernel_ns);
            parse[k].push(test_run(ebpf, BENCH_PARSE, frame, 1)?.kernel_ns);
        }
        let d = ebpf.counters().since(&before);
        none_dropped(&d, "a fresh handshake")?;
        ensure!(
            d.count(Counter::FlowsCreated) == 1,
            "a fresh handshake created no flow ({})",
            moved(&d)
        );
    }
    Ok(names
        .iter()
        .zip(insp.iter().zip(&parse))
        .map(|((id, name), (insp, parse))| FreshResult::of(id, name, 0, insp, parse))
        .collect())
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
