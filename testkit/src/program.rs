//! The eBPF object loaded in this process (no interface, no pins), its XDP
//! or TC program run on frames with BPF_PROG_TEST_RUN, and whole TCP
//! sessions driven through it.
//!
//! - [`open`]: the object with its maps written as `inspector attach` writes
//!   them (ports, verb policy, configuration word), from the same
//!   `inspector-common` functions; or bring an [`Ebpf`] configured some
//!   other way to [`Loaded::from_ebpf`].
//! - [`Loaded::run`]: one frame, with the verdict, the frame as the program
//!   left it and every counter change; [`Loaded::test_run`]: any program of
//!   the object, `repeat` times, with the kernel's timing (for the
//!   benchmark).
//! - [`Session`]: one TCP connection whose sequence and acknowledgement
//!   numbers stay consistent in both directions, as a real client and
//!   server would number them. Flow state lives in the program's LRU flow
//!   map and persists from one run to the next, so a session is a SYN, a
//!   SYN-ACK, the server greeting, then commands and replies, each run
//!   through the program in order.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use inspector_common::{
    config::{Config, CONFIG_MAP, VERB_COUNTERS_MAP},
    counters::{Counter, COUNTERS_MAP},
    fallback::{Fallback, FALLBACK_MAP},
    flow::{DEFAULT_MAX_FLOWS, FLOWS_MAP},
    policy::{entry_for, for_each_key, POLICY_MAP},
    ports::{port_slot, PORTS_MAP, PORT_WORDS},
    verbs::{key_of, verb_name, PolicyEntry, VerbKey, VERB_SLOTS},
};

use crate::frame::{Frame, Ipv4, Ipv6, Tcp, TCP_ACK, TCP_SYN};

/// Name of the XDP entry point in the object.
pub const XDP_PROGRAM: &str = "inspector_xdp";
/// Name of the TC (clsact) ingress entry point in the object.
pub const TC_PROGRAM: &str = "inspector_tc";
/// Name of the TC egress entry point in the object.
pub const TC_EGRESS_PROGRAM: &str = "inspector_tc_eg";

/// Which entry point of the object runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `inspector_xdp`: XDP_PASS = 2, XDP_DROP = 1.
    Xdp,
    /// `inspector_tc` (clsact): TC_ACT_OK = 0, TC_ACT_SHOT = 2.
    Tc,
}

impl Hook {
    /// The entry point's name in the object.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Xdp => XDP_PROGRAM,
            Hook::Tc => TC_PROGRAM,
        }
    }
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_REDIRECT: u32 = 4;

/// What the program decided, whatever the hook's return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Sent back out of the interface it came in on (XDP_TX, or a TC
    /// redirect to the same device).
    Bounce,
    /// Redirected to another interface (XDP_REDIRECT; TC's redirect shows
    /// as [`Verdict::Bounce`]): the reassembly fallback's tap.
    Redirect,
}

/// Every counter by name (`Counter::name`), summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<&'static str, u64>);

impl Counters {
    /// One counter.
    pub fn count(&self, c: Counter) -> u64 {
        self.get(c.name())
    }

    /// One counter; panics on an unknown name.
    pub fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no counter named {name}"))
    }

    /// `self - before`, counter by counter.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, v)| {
                    let b = before.0.get(k).copied().unwrap_or(0);
                    let d = v
                        .checked_sub(b)
                        .unwrap_or_else(|| panic!("counter {k} went down: {b} -> {v}"));
                    (*k, d)
                })
                .collect(),
        )
    }

    /// The counters that are not zero, for messages.
    pub fn nonzero(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// Per-verb counters: `(seen, masked)` by verb slot name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerbCounters(pub BTreeMap<&'static str, (u64, u64)>);

impl VerbCounters {
    pub fn seen(&self, verb: &str) -> u64 {
        self.0.get(verb).map(|v| v.0).unwrap_or(0)
    }
    pub fn masked(&self, verb: &str) -> u64 {
        self.0.get(verb).map(|v| v.1).unwrap_or(0)
    }
    pub fn since(&self, before: &VerbCounters) -> VerbCounters {
        VerbCounters(
            self.0
                .iter()
                .map(|(k, (s, m))| {
                    let (bs, bm) = before.0.get(k).copied().unwrap_or((0, 0));
                    (*k, (s - bs, m - bm))
                })
                .filter(|(_, v)| *v != (0, 0))
                .collect(),
        )
    }
}

/// One BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub return_value: u32,
    /// The frame as the program left it.
    pub data_out: Vec<u8>,
    /// Counter changes caused by this run.
    pub delta: Counters,
    pub verbs: VerbCounters,
}

impl Outcome {
    pub fn get(&self, counter: &str) -> u64 {
        self.delta.get(counter)
    }
}

/// Opens `object` (maps created, no program loaded yet) with its maps
/// written as `inspector attach` writes them: exactly `ports` inspected,
/// `allowed` verbs (and the verbs they imply) in the policy, the `CFG_*` bits
/// `flags`, a flow table of the default size.
pub fn open(object: &[u8], ports: &[u16], flags: u32, allowed: &[&str]) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(FLOWS_MAP, DEFAULT_MAX_FLOWS)
        .load(object)
        .context("parsing the eBPF object")?;
    let mut words = [0u64; PORT_WORDS as usize];
    for &p in ports {
        let (w, b) = port_slot(p);
        words[w as usize] |= b;
    }
    let mut map: Array<_, u64> = Array::try_from(ebpf.map_mut(PORTS_MAP).context("no port map")?)?;
    for (i, w) in words.iter().enumerate() {
        map.set(i as u32, w, 0)?;
    }
    write_policy(&mut ebpf, allowed)?;
    let mut cfg: Array<_, Config> =
        Array::try_from(ebpf.map_mut(CONFIG_MAP).context("no config map")?)?;
    cfg.set(
        0,
        Config {
            flags,
            max_flows_per_client: 0,
        },
        0,
    )?;
    Ok(ebpf)
}

/// Adds the policy entries for `allowed` (on a fresh object: exactly them).
fn write_policy(ebpf: &mut Ebpf, allowed: &[&str]) -> Result<()> {
    let keys: Vec<VerbKey> = allowed
        .iter()
        .map(|v| key_of(v.as_bytes()).with_context(|| format!("`{v}` is not a verb")))
        .collect::<Result<_>>()?;
    let mut policy: BpfHashMap<_, VerbKey, PolicyEntry> =
        BpfHashMap::try_from(ebpf.map_mut(POLICY_MAP).context("no policy map")?)?;
    let mut err = None;
    for_each_key(&keys, |k| {
        if let Some(e) = entry_for(&keys, k) {
            if let Err(x) = policy.insert(k, e, 0) {
                err.get_or_insert(x);
            }
        }
    });
    match err {
        Some(e) => Err(e).context("writing the policy map"),
        None => Ok(()),
    }
}

/// One BPF_PROG_TEST_RUN call, as the kernel reported it.
#[derive(Clone, Debug)]
pub struct TestRunResult {
    pub return_value: u32,
    /// The frame as the program left it.
    pub data_out: Vec<u8>,
    /// The kernel's average time per run (whole ns: the kernel divides the
    /// total by `repeat` and truncates).
    pub duration: Duration,
    /// Wall time of the whole system call.
    pub wall: Duration,
}

/// The object loaded in this process with one program verified and ready
/// to run.
pub struct Loaded {
    ebpf: Ebpf,
    hook: Hook,
}

impl Loaded {
    /// Loads (verifies) the program of `hook` in an opened object whose
    /// maps the caller has configured (with [`open`], or as
    /// `inspector-userspace`'s loader does).
    pub fn from_ebpf(mut ebpf: Ebpf, hook: Hook) -> Result<Loaded> {
        crate::require_root();
        let name = hook.program();
        let prog = ebpf
            .program_mut(name)
            .with_context(|| format!("the object has no program {name}"))?;
        match hook {
            Hook::Xdp => <&mut Xdp>::try_from(prog)?.load(),
            Hook::Tc => <&mut SchedClassifier>::try_from(prog)?.load(),
        }
        .with_context(|| format!("loading (verifying) {name}"))?;
        Ok(Loaded { ebpf, hook })
    }

    /// Loads (verifies) one more XDP program of the object, to run it with
    /// [`Loaded::test_run`] on the same maps.
    pub fn load_xdp(&mut self, name: &str) -> Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("the object has no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        p.load()
            .with_context(|| format!("loading (verifying) {name}"))
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The object, to change its maps (the verb policy of a live program).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Writes the reassembly fallback's entry as its daemon would: its tap
    /// `ifindex`, with a heartbeat `age_ns` old (CLOCK_MONOTONIC, the
    /// kernel's clock).
    pub fn announce_fallback(&mut self, ifindex: u32, age_ns: u64) {
        let mut a: Array<&mut MapData, Fallback> =
            Array::try_from(self.ebpf.map_mut(FALLBACK_MAP).expect("the fallback map"))
                .expect("an array");
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let f = Fallback {
            ifindex,
            heartbeat_ns: now - age_ns,
            ..Default::default()
        };
        a.set(0, f, 0).expect("writing the fallback entry");
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let map = self.ebpf.map(COUNTERS_MAP).expect("the counter map");
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("a per-CPU array");
        Counters(
            Counter::ALL
                .iter()
                .map(|c| {
                    let v = arr.get(&(*c as u32), 0).expect("reading a counter");
                    (c.name(), v.iter().sum::<u64>())
                })
                .collect(),
        )
    }

    /// The per-verb counters, summed over CPUs.
    pub fn verb_counters(&self) -> VerbCounters {
        let map = self
            .ebpf
            .map(VERB_COUNTERS_MAP)
            .expect("the verb counter map");
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("a per-CPU array");
        let sum = |slot: u32| -> u64 {
            arr.get(&slot, 0)
                .expect("reading a verb counter")
                .iter()
                .sum()
        };
        VerbCounters(
            (0..VERB_SLOTS)
                .map(|id| (verb_name(id as u8), (sum(2 * id), sum(2 * id + 1))))
                .collect(),
        )
    }

    /// Runs the program `name` (the hook's own, or one loaded with
    /// [`Loaded::load_xdp`]) `repeat` times on `frame`.
    pub fn test_run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        self.test_run_ctx(name, frame, repeat, None)
    }

    /// [`Loaded::test_run`] with a context (`xdp_md` or `__sk_buff`) given
    /// to the kernel, as [`arrival_ctx`] builds it.
    pub fn test_run_ctx(
        &self,
        name: &str,
        frame: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<TestRunResult> {
        // Room to spare: the kernel fails with ENOSPC if data_out is short,
        // and a program that grew the frame would show here.
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..Default::default()
        };
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("the object has no program {name}"))?;
        let t0 = Instant::now();
        let r = match prog {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            other => bail!(
                "{name} is a {:?} program: only XDP and TC programs run here",
                other.prog_type()
            ),
        };
        let wall = t0.elapsed();
        let r = r.with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN of {name} on a {}-byte frame",
                frame.len()
            )
        })?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunResult {
            return_value: r.return_value,
            data_out: out,
            duration: r.duration,
            wall,
        })
    }

    /// Runs the hook's program once on `frame`; panics if the kernel
    /// refuses the run or the program returns an unknown code.
    pub fn run(&self, frame: &[u8]) -> Outcome {
        self.run_ctx(frame, None)
    }

    /// [`Loaded::run`] for a frame that arrives on the interface with index
    /// `ifindex` (of the calling thread's network namespace): XDP's
    /// `ingress_ifindex`, a TC ingress hook's `ifindex` and
    /// `ingress_ifindex`. Without it a frame comes from the loopback device
    /// (XDP) or is one this host sends (TC).
    pub fn run_on(&self, frame: &[u8], ifindex: u32) -> Outcome {
        let ctx = arrival_ctx(self.hook, frame.len(), ifindex);
        self.run_ctx(frame, Some(&ctx))
    }

    fn run_ctx(&self, frame: &[u8], ctx: Option<&[u8]>) -> Outcome {
        let before = self.counters();
        let verbs_before = self.verb_counters();
        let r = self
            .test_run_ctx(self.hook.program(), frame, 1, ctx)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let verdict = match (self.hook, r.return_value) {
            (Hook::Xdp, XDP_PASS) | (Hook::Tc, TC_ACT_OK) => Verdict::Pass,
            (Hook::Xdp, XDP_DROP) | (Hook::Tc, TC_ACT_SHOT) => Verdict::Drop,
            (Hook::Xdp, XDP_TX) | (Hook::Tc, TC_ACT_REDIRECT) => Verdict::Bounce,
            (Hook::Xdp, XDP_REDIRECT) => Verdict::Redirect,
            (h, v) => panic!("{h:?} program returned {v}, neither pass nor drop"),
        };
        Outcome {
            verdict,
            return_value: r.return_value,
            data_out: r.data_out,
            delta: self.counters().since(&before),
            verbs: self.verb_counters().since(&verbs_before),
        }
    }
}

/// The context of a test run whose `len`-byte frame arrives on interface
/// `ifindex`. XDP: an `xdp_md` (data 0, data_end `len`, no metadata, the
/// interface's first receive queue). TC: the start of a `__sk_buff` up to
/// `ifindex`, the fields the kernel takes from a test run's context besides
/// `mark` and `priority` (left 0).
pub fn arrival_ctx(hook: Hook, len: usize, ifindex: u32) -> Vec<u8> {
    let words: Vec<u32> = match hook {
        // data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex
        Hook::Xdp => vec![0, len as u32, 0, ifindex, 0, 0],
        // len, pkt_type, mark, queue_mapping, protocol, vlan_present,
        // vlan_tci, vlan_proto, priority, ingress_ifindex, ifindex
        Hook::Tc => vec![0, 0, 0, 0, 0, 0, 0, 0, 0, ifindex, ifindex],
    };
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// How a session wraps its TCP segments into frames: `(segment, sent by
/// the server)`. IPv4 or IPv6, VLAN tags, extension headers, options.
pub type Shape = Box<dyn Fn(Tcp, bool) -> Frame>;

/// One TCP connection driven through a [`Loaded`] program, with
/// consistent sequence and acknowledgement numbers in both directions.
pub struct Session<'a> {
    pub prog: &'a Loaded,
    shape: Shape,
    pub client_port: u16,
    pub server_port: u16,
    /// Next sequence number of each side.
    pub cseq: u32,
    pub sseq: u32,
}

/// Initial sequence numbers (SYN and SYN-ACK carry these). The client's
/// sequence numbers wrap past 2^32 after 15 bytes, as real ones do.
pub const CLIENT_ISN: u32 = 0xffff_fff0;
pub const SERVER_ISN: u32 = 0x7fff_fff0;

impl<'a> Session<'a> {
    /// A session whose handshake has not been run yet.
    pub fn new(prog: &'a Loaded, shape: Shape, client_port: u16, server_port: u16) -> Self {
        Session {
            prog,
            shape,
            client_port,
            server_port,
            cseq: CLIENT_ISN.wrapping_add(1),
            sseq: SERVER_ISN.wrapping_add(1),
        }
    }

    /// The handshake's frames, named: the client's SYN, the server's
    /// SYN-ACK and the client's ACK (acknowledging the session's next
    /// sequence numbers, the initial ones plus one before any byte).
    pub fn handshake_frames(&self) -> [(&'static str, Vec<u8>); 3] {
        let syn = Tcp::new(self.client_port, self.server_port)
            .flags(TCP_SYN)
            .seq(CLIENT_ISN)
            .ack(0);
        let synack = Tcp::new(self.server_port, self.client_port)
            .flags(TCP_SYN | TCP_ACK)
            .seq(SERVER_ISN)
            .ack(self.cseq);
        let ack = Tcp::new(self.client_port, self.server_port)
            .flags(TCP_ACK)
            .seq(self.cseq)
            .ack(self.sseq);
        [
            ("SYN", (self.shape)(syn, false).bytes()),
            ("SYN-ACK", (self.shape)(synack, true).bytes()),
            ("ACK", (self.shape)(ack, false).bytes()),
        ]
    }

    /// Runs SYN, SYN-ACK and the client's ACK; each must pass unchanged.
    pub fn handshake(&mut self) -> &mut Self {
        for (what, frame) in self.handshake_frames() {
            let o = self.prog.run(&frame);
            assert_eq!(o.verdict, Verdict::Pass, "{what}");
            assert_eq!(o.data_out, frame, "{what} changed");
        }
        self
    }

    /// A client segment at `seq` (with the current acknowledgement).
    pub fn client_frame_at(&self, seq: u32, payload: &[u8]) -> Vec<u8> {
        let t = Tcp::new(self.client_port, self.server_port)
            .seq(seq)
            .ack(self.sseq)
            .payload(payload);
        (self.shape)(t, false).bytes()
    }

    /// The next in-order client segment.
    pub fn client_frame(&self, payload: &[u8]) -> Vec<u8> {
        self.client_frame_at(self.cseq, payload)
    }

    /// A server segment at `seq`, acknowledging all client bytes.
    pub fn server_frame_at(&self, seq: u32, payload: &[u8]) -> Vec<u8> {
        let t = Tcp::new(self.server_port, self.client_port)
            .seq(seq)
            .ack(self.cseq)
            .payload(payload);
        (self.shape)(t, true).bytes()
    }

    /// The next in-order server segment, acknowledging all client bytes.
    pub fn server_frame(&self, payload: &[u8]) -> Vec<u8> {
        self.server_frame_at(self.sseq, payload)
    }

    /// Runs a client frame built by the caller (from [`Session::client_frame`]
    /// or changed after it); if it passes and starts at the next sequence
    /// number, the client's sequence number advances past `payload_len`.
    pub fn run_client_frame(&mut self, frame: &[u8], payload_len: usize) -> Outcome {
        let o = self.prog.run(frame);
        if o.verdict == Verdict::Pass {
            self.cseq = self.cseq.wrapping_add(payload_len as u32);
        }
        o
    }

    /// Sends `payload` from the client in order; advances if it passed.
    pub fn client(&mut self, payload: &[u8]) -> Outcome {
        let frame = self.client_frame(payload);
        self.run_client_frame(&frame, payload.len())
    }

    /// Sends `payload` from the server; it must pass unchanged.
    pub fn server(&mut self, payload: &[u8]) -> Outcome {
        let frame = self.server_frame(payload);
        let o = self.prog.run(&frame);
        assert_eq!(
            o.verdict,
            Verdict::Pass,
            "server segment {:?} was dropped",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(
            o.data_out,
            frame,
            "server segment {:?} was changed",
            String::from_utf8_lossy(payload)
        );
        self.sseq = self.sseq.wrapping_add(payload.len() as u32);
        o
    }

    /// Sends `payload` from the server and returns what became of it
    /// (EHLO reply filtering may change it); advances if it passed.
    pub fn server_run(&mut self, payload: &[u8]) -> Outcome {
        let frame = self.server_frame(payload);
        let o = self.prog.run(&frame);
        if o.verdict == Verdict::Pass {
            self.sseq = self.sseq.wrapping_add(payload.len() as u32);
        }
        o
    }

    /// Handshake, then the server's greeting.
    pub fn open(&mut self) -> &mut Self {
        self.handshake();
        self.server(b"220 server.test ESMTP\r\n");
        self
    }
}

/// A client port not used before in this process (each test drives its own
/// flow through the shared flow table).
pub fn client_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(41000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Plain IPv4 frames.
pub fn v4() -> Shape {
    Box::new(|t, r| {
        let ip = Ipv4::tcp(t);
        Frame::ipv4(if r { ip.reply() } else { ip })
    })
}

/// Plain IPv6 frames.
pub fn v6() -> Shape {
    Box::new(|t, r| {
        let ip = Ipv6::tcp(t);
        Frame::ipv6(if r { ip.reply() } else { ip })
    })
}
