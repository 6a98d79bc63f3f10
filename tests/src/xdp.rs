//! The embedded XDP program, loaded in this process (no interface, no pins)
//! and run on hand-built frames with BPF_PROG_TEST_RUN.

use aya::{
    maps::PerCpuArray,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use inspector_common::{
    config::{Config, CFG_MONITOR},
    counters::{Counter, COUNTERS_MAP},
    verbs::DEFAULT_ALLOWED,
};
use inspector_userspace::loader::{self, EBPF_OBJECT, XDP_PROGRAM};

use crate::inspector::Counts;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The kernel refuses BPF_PROG_TEST_RUN on XDP input shorter than an
/// Ethernet header (`bpf_test_init`: `size < ETH_HLEN` is EINVAL).
pub const MIN_TEST_RUN_LEN: usize = 14;

/// The program loaded in this process, configured through its maps as
/// `inspector attach` configures it.
pub struct LoadedXdp {
    ebpf: Ebpf,
}

/// One run: what the program returned and what the frame became.
#[derive(Debug)]
pub struct Run {
    pub return_value: u32,
    pub data_out: Vec<u8>,
    /// Counter changes caused by this run.
    pub delta: Counts,
}

impl LoadedXdp {
    /// Ports 25 and 587, monitor mode (`attach --monitor`): the program
    /// parses, tracks flows and counts, but never drops or changes a frame.
    /// The header-parsing tests use this, so that every frame must come out
    /// as it went in.
    pub fn monitor() -> LoadedXdp {
        Self::load_with(&[25, 587], CFG_MONITOR)
    }

    /// Ports 25 and 587, enforcing, with `attach`'s defaults: the default
    /// verb policy, mid-stream flows passed, fragments of inspected flows
    /// dropped.
    pub fn enforcing() -> LoadedXdp {
        Self::load_with(&[25, 587], 0)
    }

    /// `ports`, the `CFG_*` bits `flags`, and the default verb policy.
    pub fn load_with(ports: &[u16], flags: u32) -> LoadedXdp {
        crate::require_root();
        let mut ebpf = loader::open(EBPF_OBJECT, None).expect("opening the embedded eBPF object");
        loader::set_ports(&mut ebpf, ports).expect("writing the port bitmap");
        let allowed: Vec<_> = DEFAULT_ALLOWED
            .iter()
            .map(|v| loader::parse_verb(v).expect("a default verb"))
            .collect();
        loader::set_policy(&mut ebpf, &allowed).expect("writing the verb policy");
        loader::set_config(&mut ebpf, Config { flags, _pad: 0 }).expect("writing the config");
        loader::load_xdp(&mut ebpf).unwrap_or_else(|e| panic!("loading the XDP program: {e:#}"));
        LoadedXdp { ebpf }
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program(XDP_PROGRAM)
            .expect("the object has the XDP program")
            .try_into()
            .expect("it is an XDP program")
    }

    /// The counters, summed over CPUs, read from the loaded map.
    pub fn counts(&self) -> Counts {
        let map = self.ebpf.map(COUNTERS_MAP).expect("the counter map");
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("a per-CPU array");
        Counts::from_pairs(Counter::ALL.iter().map(|c| {
            let per_cpu = arr.get(&(*c as u32), 0).expect("reading a counter");
            (c.name(), per_cpu.iter().sum::<u64>())
        }))
    }

    /// Runs the program once on `frame`.
    pub fn try_run(&self, frame: &[u8]) -> Result<Run, ProgramError> {
        let before = self.counts();
        // Room to spare: the kernel fails with ENOSPC if data_out is short,
        // and a program that grew the frame would show here.
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.program().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            return_value: r.return_value,
            data_out: out,
            delta: self.counts().since(&before),
        })
    }

    /// Runs the program on `frame`, asserts XDP_PASS and that not one byte
    /// changed, and returns the counter changes.
    pub fn run(&self, frame: &[u8]) -> Counts {
        let r = self.try_run(frame).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN on a {}-byte frame failed: {e}",
                frame.len()
            )
        });
        assert_eq!(
            r.return_value,
            XDP_PASS,
            "XDP action for a {}-byte frame",
            frame.len()
        );
        assert!(
            r.data_out == frame,
            "the program changed the frame ({} bytes in, {} out)\n in: {}\nout: {}",
            frame.len(),
            r.data_out.len(),
            hex(frame),
            hex(&r.data_out)
        );
        r.delta
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Expected counter changes for one frame.
pub mod expect {
    use crate::inspector::Counts;

    /// A payload segment of a tracked, inspected flow with `payload` bytes.
    pub fn inspected(payload: usize) -> Counts {
        Counts {
            packets_seen: 1,
            packets_inspected: 1,
            bytes_inspected: payload as u64,
            ..Counts::default()
        }
    }

    /// A payload segment of an inspected port whose flow start was not seen:
    /// parsed to the payload, counted as mid-stream, not inspected.
    pub fn midstream() -> Counts {
        Counts {
            packets_seen: 1,
            midstream: 1,
            ..Counts::default()
        }
    }

    /// A client SYN to an inspected port: a new flow.
    pub fn flow_created() -> Counts {
        Counts {
            packets_seen: 1,
            flows_created: 1,
            ..Counts::default()
        }
    }

    /// Seen, nothing else (not TCP, not an inspected port, or no payload).
    pub fn ignored() -> Counts {
        Counts {
            packets_seen: 1,
            ..Counts::default()
        }
    }

    pub fn malformed() -> Counts {
        Counts {
            packets_seen: 1,
            malformed: 1,
            ..Counts::default()
        }
    }

    pub fn fragment() -> Counts {
        Counts {
            packets_seen: 1,
            fragments: 1,
            ..Counts::default()
        }
    }
}
