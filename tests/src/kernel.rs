//! The embedded XDP or TC program loaded in this process and driven with
//! BPF_PROG_TEST_RUN through whole TCP sessions: every counter (not only
//! the header-level ones of [`crate::xdp`]), the per-verb counters, and a
//! [`Session`] helper that keeps the sequence numbers of both directions
//! consistent, as a real client and server would.
//!
//! Flow state lives in the program's LRU flow map and persists from one
//! run to the next, so a session is a SYN, a SYN-ACK, the server greeting,
//! then commands and replies, each run through the program in order.

use std::collections::BTreeMap;

use aya::{
    maps::PerCpuArray,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use inspector_common::{
    config::{Config, VERB_COUNTERS_MAP},
    counters::{Counter, COUNTERS_MAP},
    verbs::{verb_name, DEFAULT_ALLOWED, VERB_SLOTS},
};
use inspector_userspace::loader::{self, EBPF_OBJECT, TC_PROGRAM, XDP_PROGRAM};

use crate::frame::{Frame, Tcp, TCP_ACK, TCP_SYN};

/// Which entry point of the object runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `inspector_xdp`: XDP_PASS = 2, XDP_DROP = 1.
    Xdp,
    /// `inspector_tc` (clsact): TC_ACT_OK = 0, TC_ACT_SHOT = 2.
    Tc,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const TC_ACT_REDIRECT: u32 = 7;

/// What the program decided, whatever the hook's return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Sent back out of the interface it came in on (XDP_TX, or a TC
    /// redirect to the same device).
    Bounce,
}

/// Every counter by name (`Counter::name`), summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<&'static str, u64>);

impl Counters {
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

/// The object loaded in this process with one program verified and ready
/// to run, its maps configured as `inspector attach` configures them.
pub struct Loaded {
    ebpf: Ebpf,
    hook: Hook,
}

impl Loaded {
    /// Ports 25 and 587, the default verb policy, the `CFG_*` bits `flags`.
    pub fn new(hook: Hook, flags: u32) -> Loaded {
        Self::with_policy(hook, &[25, 587], flags, DEFAULT_ALLOWED)
    }

    /// Explicit ports, flags and allowed verbs.
    pub fn with_policy(hook: Hook, ports: &[u16], flags: u32, allowed: &[&str]) -> Loaded {
        crate::require_root();
        let mut ebpf = loader::open(EBPF_OBJECT, None).expect("opening the embedded eBPF object");
        loader::set_ports(&mut ebpf, ports).expect("writing the port bitmap");
        let keys: Vec<_> = allowed
            .iter()
            .map(|v| loader::parse_verb(v).expect("a valid verb"))
            .collect();
        loader::set_policy(&mut ebpf, &keys).expect("writing the verb policy");
        loader::set_config(&mut ebpf, Config { flags, _pad: 0 }).expect("writing the config");
        match hook {
            Hook::Xdp => {
                loader::load_xdp(&mut ebpf)
                    .unwrap_or_else(|e| panic!("loading the XDP program: {e:#}"));
            }
            Hook::Tc => {
                loader::load_tc(&mut ebpf)
                    .unwrap_or_else(|e| panic!("loading the TC program: {e:#}"));
            }
        }
        Loaded { ebpf, hook }
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Replaces the allowed verbs on the loaded program (as `inspector
    /// policy` does on a live one).
    pub fn set_policy(&mut self, allowed: &[&str]) {
        let keys: Vec<_> = allowed
            .iter()
            .map(|v| loader::parse_verb(v).expect("a valid verb"))
            .collect();
        loader::set_policy(&mut self.ebpf, &keys).expect("writing the verb policy");
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

    /// Runs the program once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Outcome {
        let before = self.counters();
        let verbs_before = self.verb_counters();
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let r = match self.hook {
            Hook::Xdp => {
                let p: &Xdp = self
                    .ebpf
                    .program(XDP_PROGRAM)
                    .expect("the XDP program")
                    .try_into()
                    .expect("an XDP program");
                p.test_run(opts)
            }
            Hook::Tc => {
                let p: &SchedClassifier = self
                    .ebpf
                    .program(TC_PROGRAM)
                    .expect("the TC program")
                    .try_into()
                    .expect("a TC program");
                p.test_run(opts)
            }
        }
        .unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN ({:?}) on a {}-byte frame failed: {e}",
                self.hook,
                frame.len()
            )
        });
        out.truncate(r.data_size_out as usize);
        let verdict = match (self.hook, r.return_value) {
            (Hook::Xdp, XDP_PASS) | (Hook::Tc, TC_ACT_OK) => Verdict::Pass,
            (Hook::Xdp, XDP_DROP) | (Hook::Tc, TC_ACT_SHOT) => Verdict::Drop,
            (Hook::Xdp, XDP_TX) | (Hook::Tc, TC_ACT_REDIRECT) => Verdict::Bounce,
            (h, v) => panic!("{h:?} program returned {v}, neither pass nor drop"),
        };
        Outcome {
            verdict,
            return_value: r.return_value,
            data_out: out,
            delta: self.counters().since(&before),
            verbs: self.verb_counters().since(&verbs_before),
        }
    }
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

    /// Runs SYN, SYN-ACK and the client's ACK; each must pass unchanged.
    pub fn handshake(&mut self) -> &mut Self {
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
        for (what, seg, reply) in [
            ("SYN", syn, false),
            ("SYN-ACK", synack, true),
            ("ACK", ack, false),
        ] {
            let frame = (self.shape)(seg, reply).bytes();
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

    /// The next in-order server segment, acknowledging all client bytes.
    pub fn server_frame(&self, payload: &[u8]) -> Vec<u8> {
        let t = Tcp::new(self.server_port, self.client_port)
            .seq(self.sseq)
            .ack(self.cseq)
            .payload(payload);
        (self.shape)(t, true).bytes()
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
        let ip = crate::frame::Ipv4::tcp(t);
        crate::frame::Frame::ipv4(if r { ip.reply() } else { ip })
    })
}

/// Plain IPv6 frames.
pub fn v6() -> Shape {
    Box::new(|t, r| {
        let ip = crate::frame::Ipv6::tcp(t);
        crate::frame::Frame::ipv6(if r { ip.reply() } else { ip })
    })
}
