//! Loading the embedded eBPF object and configuring its maps.

use std::{fmt, path::Path};

use anyhow::{Context, Result};
use aya::{
    maps::Array,
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use inspector_common::{
    config::{Config, CONFIG_MAP, VERB_COUNTERS_MAP},
    counters::COUNTERS_MAP,
    events::EVENTS_MAP,
    fallback::{Fallback, FALLBACK_MAP, WAKE_MAP},
    flow::{CLIENT_FLOWS_MAP, DEFAULT_MAX_FLOWS, FLOWS_MAP, HANDSHAKES_MAP},
    policy::{entry_for, for_each_key, POLICY_GEN_MAP, POLICY_MAP},
    ports::{port_slot, PORTS_MAP, PORT_WORDS},
    verbs::{key_of, PolicyEntry, VerbKey},
};

/// The eBPF object built by `build.rs`, embedded so the binary is
/// self-contained.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inspector.bpf.o"));

/// Name of the XDP entry point in the object.
pub const XDP_PROGRAM: &str = "inspector_xdp";
/// Name of the TC ingress entry point in the object (also attached to the
/// reassembly fallback's tap).
pub const TC_PROGRAM: &str = "inspector_tc";
/// Name of the TC egress entry point, which inspects only what the host
/// itself sends (see the eBPF crate's `inspector_tc_eg`).
pub const TC_EGRESS_PROGRAM: &str = "inspector_tc_eg";

/// Every map of the object, by the name it is pinned under.
pub const MAP_NAMES: &[&str] = &[
    COUNTERS_MAP,
    VERB_COUNTERS_MAP,
    PORTS_MAP,
    POLICY_MAP,
    POLICY_GEN_MAP,
    FLOWS_MAP,
    HANDSHAKES_MAP,
    CLIENT_FLOWS_MAP,
    CONFIG_MAP,
    EVENTS_MAP,
    FALLBACK_MAP,
    WAKE_MAP,
];

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
    open_with(object, pin_dir, None)
}

/// Key and value sizes each map must have: a map pinned by another version
/// with another layout must not be reused.
fn expected_layout(name: &str) -> Option<(u32, u32)> {
    use inspector_common::flow::{Flow, FlowKey, Handshake};
    use std::mem::size_of;
    Some(match name {
        COUNTERS_MAP | VERB_COUNTERS_MAP | PORTS_MAP | POLICY_GEN_MAP => (4, 8),
        POLICY_MAP => (size_of::<VerbKey>() as u32, size_of::<PolicyEntry>() as u32),
        FLOWS_MAP => (size_of::<FlowKey>() as u32, size_of::<Flow>() as u32),
        HANDSHAKES_MAP => (size_of::<FlowKey>() as u32, size_of::<Handshake>() as u32),
        CLIENT_FLOWS_MAP => (16, 8),
        CONFIG_MAP => (4, size_of::<Config>() as u32),
        FALLBACK_MAP => (4, size_of::<Fallback>() as u32),
        _ => return None,
    })
}

/// Checks the maps already pinned in `pin_dir` against this version.
fn check_pinned(pin_dir: &Path, max_flows: u32) -> Result<()> {
    for name in MAP_NAMES {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let again = format!(
            "run `inspector detach --pin-dir {}` first (this forgets the state of open flows)",
            pin_dir.display()
        );
        if let Some((k, v)) = expected_layout(name) {
            if (info.key_size(), info.value_size()) != (k, v) {
                anyhow::bail!(
                    "pinned map {} has another layout (from another version of inspector); {again}",
                    path.display()
                );
            }
        }
        // The flow table was an LRU before admission control.
        if *name == FLOWS_MAP && !matches!(info.map_type(), Ok(aya::maps::MapType::Hash)) {
            anyhow::bail!(
                "pinned map {} is of another type (from another version of inspector); {again}",
                path.display()
            );
        }
        if *name == FLOWS_MAP && info.max_entries() != max_flows {
            anyhow::bail!(
                "the pinned flow table holds {} flows, {max_flows} were asked for; {again}",
                info.max_entries()
            );
        }
    }
    Ok(())
}

/// [`open`] with a flow-table size (default [`DEFAULT_MAX_FLOWS`]).
pub fn open_with(object: &[u8], pin_dir: Option<&Path>, max_flows: Option<u32>) -> Result<Ebpf> {
    let max_flows = max_flows.unwrap_or(DEFAULT_MAX_FLOWS);
    if let Some(d) = pin_dir {
        check_pinned(d, max_flows)?;
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(FLOWS_MAP, max_flows);
    // There cannot be more clients than flows.
    loader.map_max_entries(CLIENT_FLOWS_MAP, max_flows);
    let paths: Vec<_> = pin_dir
        .map(|d| MAP_NAMES.iter().map(|n| (*n, d.join(n))).collect())
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(object).map_err(|e| match e {
        // The map error is in the message; as a source it would be printed
        // a second time.
        EbpfError::MapError(ref m) => anyhow::anyhow!(
            "creating the eBPF maps failed: {m}{}",
            pin_dir
                .map(|d| format!(" (pin dir {})", d.display()))
                .unwrap_or_default()
        ),
        other => anyhow::Error::new(other).context("parsing the embedded eBPF object failed"),
    })
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

/// Loads (verifies) the TC programs, ingress and egress.
pub fn load_tc(ebpf: &mut Ebpf) -> Result<()> {
    for name in [TC_PROGRAM, TC_EGRESS_PROGRAM] {
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program `{name}`"))?
            .try_into()
            .context("program has the wrong type")?;
        prog.load().map_err(|e| verifier_error(name, e))?;
    }
    Ok(())
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

/// Parses a verb as the operator wrote it.
pub fn parse_verb(text: &str) -> Result<VerbKey> {
    key_of(text.as_bytes()).with_context(|| {
        format!(
            "`{text}` is not a verb: a verb has 1 to 8 characters among letters, digits, `-` and `_`"
        )
    })
}

/// Makes the policy map hold exactly what `allowed` needs. Entries are
/// added before stale ones are removed, so a live flow never sees a verb
/// that stays allowed disappear, even for an instant.
pub fn set_policy(ebpf: &mut Ebpf, allowed: &[VerbKey]) -> Result<()> {
    let mut map: aya::maps::HashMap<_, VerbKey, PolicyEntry> = aya::maps::HashMap::try_from(
        ebpf.map_mut(POLICY_MAP)
            .with_context(|| format!("the eBPF object has no map {POLICY_MAP}"))?,
    )?;
    write_policy(&mut map, allowed)?;
    let mut gen: Array<_, u64> = Array::try_from(
        ebpf.map_mut(POLICY_GEN_MAP)
            .with_context(|| format!("the eBPF object has no map {POLICY_GEN_MAP}"))?,
    )?;
    policy_written(&mut gen)
}

/// Tells the kernel's per-CPU policy caches that the policy map changed
/// (`inspector_common::policy::POLICY_GEN_MAP`): called after every write
/// of the policy map, never before. Two writers at once may both write the
/// same next number; that is enough, since both wrote their entries before
/// either read the number.
pub fn policy_written<T: std::borrow::BorrowMut<aya::maps::MapData>>(
    gen: &mut Array<T, u64>,
) -> Result<()> {
    let now = gen
        .get(&0, 0)
        .with_context(|| format!("reading {POLICY_GEN_MAP}"))?;
    gen.set(0, now.wrapping_add(1), 0)
        .with_context(|| format!("updating {POLICY_GEN_MAP}"))
}

/// [`set_policy`] on an already opened map (also used on a pinned map).
pub fn write_policy<T: std::borrow::BorrowMut<aya::maps::MapData>>(
    map: &mut aya::maps::HashMap<T, VerbKey, PolicyEntry>,
    allowed: &[VerbKey],
) -> Result<()> {
    let mut wanted = std::collections::BTreeMap::new();
    for_each_key(allowed, |k| {
        if let Some(e) = entry_for(allowed, k) {
            wanted.insert(k, e);
        }
    });
    for (k, e) in &wanted {
        if map.get(k, 0).ok() != Some(*e) {
            map.insert(k, e, 0)
                .with_context(|| format!("updating {POLICY_MAP}"))?;
        }
    }
    let stale: Vec<VerbKey> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k)
            .with_context(|| format!("updating {POLICY_MAP}"))?;
    }
    Ok(())
}

/// The allowed verbs of a policy map (entries that are only prefixes of
/// allowed verbs are not verbs of the policy).
pub fn allowed_in<T: std::borrow::Borrow<aya::maps::MapData>>(
    map: &aya::maps::HashMap<T, VerbKey, PolicyEntry>,
) -> Vec<VerbKey> {
    let mut v: Vec<VerbKey> = map
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(_, e)| e.flags & inspector_common::verbs::ALLOWED != 0)
        .map(|(k, _)| k)
        .collect();
    v.sort();
    v
}

/// The allowed verbs of the loaded object's policy map (for a takeover:
/// the pinned map, as the running instance left it).
pub fn policy_of(ebpf: &mut Ebpf) -> Result<Vec<VerbKey>> {
    let map: aya::maps::HashMap<_, VerbKey, PolicyEntry> = aya::maps::HashMap::try_from(
        ebpf.map_mut(POLICY_MAP)
            .with_context(|| format!("the eBPF object has no map {POLICY_MAP}"))?,
    )?;
    Ok(allowed_in(&map))
}

/// A verb key as text (upper case, as the policy holds it).
pub fn verb_text(k: VerbKey) -> String {
    let mut t = [0u8; inspector_common::verbs::MAX_VERB];
    let n = inspector_common::verbs::key_text(k, &mut t);
    String::from_utf8_lossy(&t[..n]).into_owned()
}

/// Writes the run-time configuration word.
pub fn set_config(ebpf: &mut Ebpf, config: Config) -> Result<()> {
    let mut map: Array<_, Config> = Array::try_from(
        ebpf.map_mut(CONFIG_MAP)
            .with_context(|| format!("the eBPF object has no map {CONFIG_MAP}"))?,
    )?;
    map.set(0, config, 0)
        .with_context(|| format!("updating {CONFIG_MAP}"))?;
    Ok(())
}
