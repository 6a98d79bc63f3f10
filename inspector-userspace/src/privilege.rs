//! Privilege checks, done before anything is touched so that a missing
//! capability gives one clear line instead of an EPERM from deep inside.

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability mask of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Fails unless this process may load eBPF programs and attach them to
/// interfaces: CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN.
pub fn require_admin(what: &str) -> Result<()> {
    let caps = effective_caps();
    let bpf = has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON));
    if !bpf || !has(caps, CAP_NET_ADMIN) {
        bail!(
            "`inspector {what}` needs root, or the capabilities CAP_BPF, CAP_PERFMON and \
             CAP_NET_ADMIN (CAP_SYS_ADMIN to mount bpffs); run it with sudo"
        );
    }
    Ok(())
}

/// Fails unless this process may read pinned maps (CAP_BPF or CAP_SYS_ADMIN).
pub fn require_bpf(what: &str) -> Result<()> {
    let caps = effective_caps();
    if !(has(caps, CAP_SYS_ADMIN) || has(caps, CAP_BPF)) {
        bail!("`inspector {what}` needs root or CAP_BPF to read the pinned maps; run it with sudo");
    }
    Ok(())
}
