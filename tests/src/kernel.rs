//! The embedded XDP or TC program (the object `inspector` carries) loaded
//! in this process, configured by `inspector-userspace`'s own loader, and
//! driven with BPF_PROG_TEST_RUN through whole TCP sessions: every counter,
//! the per-verb counters, and the kit's [`Session`] with consistent
//! sequence numbers in both directions.

use std::ops::{Deref, DerefMut};

use inspector_common::{config::Config, verbs::DEFAULT_ALLOWED};
use inspector_userspace::loader::{self, EBPF_OBJECT};

pub use inspector_testkit::program::{
    client_port, v4, v6, Counters, Hook, Outcome, Session, Shape, VerbCounters, Verdict,
    CLIENT_ISN, SERVER_ISN, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS,
    XDP_REDIRECT, XDP_TX,
};

/// The embedded object loaded in this process with one program verified
/// and ready to run, its maps configured as `inspector attach` configures
/// them. Everything else is the kit's [`inspector_testkit::program::Loaded`].
pub struct Loaded(inspector_testkit::program::Loaded);

impl Loaded {
    /// Ports 25 and 587, the default verb policy, the `CFG_*` bits `flags`.
    pub fn new(hook: Hook, flags: u32) -> Loaded {
        Self::with_policy(hook, &[25, 587], flags, DEFAULT_ALLOWED)
    }

    /// Explicit ports, flags and allowed verbs.
    pub fn with_policy(hook: Hook, ports: &[u16], flags: u32, allowed: &[&str]) -> Loaded {
        Self::with_table(hook, ports, flags, allowed, None, 0)
    }

    /// [`Loaded::with_policy`] with a flow table of `max_flows` entries
    /// (`None`: the default) and a per-client cap (`0`: the default), as
    /// `attach --max-flows --max-flows-per-client` set them.
    pub fn with_table(
        hook: Hook,
        ports: &[u16],
        flags: u32,
        allowed: &[&str],
        max_flows: Option<u32>,
        max_flows_per_client: u32,
    ) -> Loaded {
        crate::require_root();
        let mut ebpf = loader::open_with(EBPF_OBJECT, None, max_flows)
            .expect("opening the embedded eBPF object");
        loader::set_ports(&mut ebpf, ports).expect("writing the port bitmap");
        set_policy(&mut ebpf, allowed);
        loader::set_config(
            &mut ebpf,
            Config {
                flags,
                max_flows_per_client,
            },
        )
        .expect("writing the config");
        let prog = inspector_testkit::program::Loaded::from_ebpf(ebpf, hook)
            .unwrap_or_else(|e| panic!("loading the {hook:?} program: {e:#}"));
        Loaded(prog)
    }

    /// Replaces the allowed verbs on the loaded program (as `inspector
    /// policy` does on a live one).
    pub fn set_policy(&mut self, allowed: &[&str]) {
        set_policy(self.0.ebpf_mut(), allowed);
    }
}

fn set_policy(ebpf: &mut aya::Ebpf, allowed: &[&str]) {
    let keys: Vec<_> = allowed
        .iter()
        .map(|v| loader::parse_verb(v).expect("a valid verb"))
        .collect();
    loader::set_policy(ebpf, &keys).expect("writing the verb policy");
}

impl Deref for Loaded {
    type Target = inspector_testkit::program::Loaded;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Loaded {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Keeps the calling thread on the CPU it runs on until dropped.
/// BPF_PROG_TEST_RUN runs a program on the caller's CPU, so every run
/// then meets the same per-CPU map entries (the policy cache): a test of
/// what those entries keep from one run to the next cannot pass by being
/// moved to a CPU that holds nothing.
pub struct OnOneCpu(libc::cpu_set_t);

impl OnOneCpu {
    pub fn new() -> OnOneCpu {
        // SAFETY: plain syscalls on this thread's affinity mask, with a
        // `cpu_set_t` owned here.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut before), 0);
            let cpu = libc::sched_getcpu();
            assert!(
                cpu >= 0,
                "sched_getcpu: {}",
                std::io::Error::last_os_error()
            );
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            assert_eq!(
                libc::sched_setaffinity(0, size, &one),
                0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
            OnOneCpu(before)
        }
    }
}

impl Default for OnOneCpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OnOneCpu {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `new`.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}
