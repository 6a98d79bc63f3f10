//! The embedded XDP program, loaded in this process (no interface, no pins)
//! and run on hand-built frames with BPF_PROG_TEST_RUN, judged by the
//! header-level counters ([`Counts`]).

use inspector_common::config::CFG_MONITOR;

use crate::{
    inspector::Counts,
    kernel::{Hook, Loaded},
};

pub use inspector_testkit::program::{XDP_DROP, XDP_PASS};

/// The kernel refuses BPF_PROG_TEST_RUN on XDP input shorter than an
/// Ethernet header (`bpf_test_init`: `size < ETH_HLEN` is EINVAL).
pub const MIN_TEST_RUN_LEN: usize = 14;

/// The program loaded in this process, configured through its maps as
/// `inspector attach` configures it.
pub struct LoadedXdp {
    prog: Loaded,
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
        LoadedXdp {
            prog: Loaded::with_policy(
                Hook::Xdp,
                ports,
                flags,
                inspector_common::verbs::DEFAULT_ALLOWED,
            ),
        }
    }

    /// The counters, summed over CPUs, read from the loaded map.
    pub fn counts(&self) -> Counts {
        Counts::from_pairs(self.prog.counters().0)
    }

    /// Runs the program once on `frame`.
    pub fn try_run(&self, frame: &[u8]) -> anyhow::Result<Run> {
        let before = self.counts();
        let r = self.prog.test_run(Hook::Xdp.program(), frame, 1)?;
        Ok(Run {
            return_value: r.return_value,
            data_out: r.data_out,
            delta: self.counts().since(&before),
        })
    }

    /// Runs the program on `frame`, asserts XDP_PASS and that not one byte
    /// changed, and returns the counter changes.
    pub fn run(&self, frame: &[u8]) -> Counts {
        let r = self.try_run(frame).unwrap_or_else(|e| panic!("{e:#}"));
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
