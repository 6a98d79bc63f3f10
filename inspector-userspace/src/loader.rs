//! Loading the embedded eBPF object and configuring its maps.

use std::{fmt, path::Path};

use anyhow::{Context, Result};
use aya::{
    maps::Array,
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use inspector_common::{
    counters::COUNTERS_MAP,
    ports::{port_slot, PORTS_MAP, PORT_WORDS},
};

/// The eBPF object built by `build.rs`, embedded so the binary is
/// self-contained.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inspector.bpf.o"));

/// Name of the XDP entry point in the object.
pub const XDP_PROGRAM: &str = "inspector_xdp";

/// Every map of the object, by the name it is pinned under.
pub const MAP_NAMES: &[&str] = &[COUNTERS_MAP, PORTS_MAP];

/// The kernel refused to load a program. Carries the verifier's log, which is
/// the only useful explanation of why.
#[derive(Debug)]
pub struct VerifierRejected {
    pub program: String,
    pub error: std::io::Error,
    pub log: String,
}

impl fmt::Display for VerifierRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the kernel's verifier rejected eBPF program `{}` ({}); verifier log:\n{}",
            self.program,
            self.error,
            self.log.trim_end()
        )
    }
}

impl std::error::Error for VerifierRejected {}

/// Loads the object (maps created, programs not yet loaded).
///
/// With a `pin_dir`, every map is pinned there by name, and a map already
/// pinned there is reused instead of created (that is how a restarted daemon
/// keeps the live state).
pub fn open(object: &[u8], pin_dir: Option<&Path>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<_> = pin_dir
        .map(|d| MAP_NAMES.iter().map(|n| (*n, d.join(n))).collect())
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(object).map_err(|e| match e {
        EbpfError::MapError(ref m) => anyhow::Error::new(e_to_io(m)).context(format!(
            "creating the eBPF maps failed: {m}{}",
            pin_dir
                .map(|d| format!(" (pin dir {})", d.display()))
                .unwrap_or_default()
        )),
        other => anyhow::Error::new(other).context("parsing the embedded eBPF object failed"),
    })
}

fn e_to_io(m: &aya::maps::MapError) -> std::io::Error {
    std::io::Error::other(m.to_string())
}

/// Loads (verifies) the XDP program and returns it, ready to attach or run.
pub fn load_xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .with_context(|| format!("the eBPF object has no program `{XDP_PROGRAM}`"))?
        .try_into()
        .context("program has the wrong type")?;
    prog.load().map_err(|e| verifier_error(XDP_PROGRAM, e))?;
    Ok(prog)
}

/// Turns a load error into [`VerifierRejected`] when the verifier spoke.
pub fn verifier_error(program: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => VerifierRejected {
            program: program.to_string(),
            error: io_error,
            log: verifier_log.to_string(),
        }
        .into(),
        other => anyhow::Error::new(other).context(format!("loading eBPF program `{program}`")),
    }
}

/// Writes the inspected-port bitmap: exactly `ports`, nothing else.
pub fn set_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<()> {
    let mut words = [0u64; PORT_WORDS as usize];
    for &p in ports {
        let (w, b) = port_slot(p);
        words[w as usize] |= b;
    }
    let mut map: Array<_, u64> = Array::try_from(
        ebpf.map_mut(PORTS_MAP)
            .with_context(|| format!("the eBPF object has no map {PORTS_MAP}"))?,
    )?;
    for (i, w) in words.iter().enumerate() {
        // Only touch words that differ, so a live map sees no transient state
        // for ports that do not change.
        if map.get(&(i as u32), 0)? != *w {
            map.set(i as u32, w, 0)
                .with_context(|| format!("updating {PORTS_MAP}"))?;
        }
    }
    Ok(())
}
