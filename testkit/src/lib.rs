//! Test scaffolding for inspector, shared by the kernel, command-line and
//! end-to-end tests (`tests/`), `cargo xtask bench` and `cargo xtask demo`.
//!
//! - [`frame`]: hand-built Ethernet/VLAN/IPv4/IPv6/TCP/UDP frames with
//!   checksums computed here, independently of the program under test.
//! - [`program`]: the eBPF object loaded in this process, its XDP or TC
//!   program run on frames with BPF_PROG_TEST_RUN (once, or `repeat` times
//!   for timing), counters read from its maps, and TCP sessions driven
//!   through it with consistent sequence numbers.
//! - [`netns`]: network namespaces and the gateways of `docs/testbed.md`:
//!   the three-host [`netns::Testbed`] (client, gateway, server) and the
//!   one-armed [`netns::OneArmed`], removed on drop; threads that enter a
//!   namespace.
//! - [`proc`]: child processes with captured output, bounded waits, and a
//!   parent-death signal so nothing outlives a killed run.
//! - [`inspector`]: an `inspector attach` running in a namespace
//!   ([`inspector::Inspector`]), and its counters via `inspector stats`.
//! - [`smtpd`]: the recording aiosmtpd server (`testkit/py/recording_smtpd.py`),
//!   the judge of what the server really received.
//! - [`postfix`]: a real Postfix instance with its own configuration in a
//!   namespace, delivering into a Maildir.
//! - [`client`]: the scripted SMTP client (`testkit/py/smtp_client.py`):
//!   exact bytes and exact segmentation.
//!
//! This crate does not depend on `inspector-userspace` (xtask uses it, and
//! that crate's build script builds the eBPF object): whoever runs a program
//! hands over the object's bytes. Everything here needs root. Nothing waits
//! a fixed time: every wait polls a readiness condition with a deadline.

pub mod client;
pub mod exim;
pub mod frame;
pub mod inspector;
pub mod netns;
pub mod postfix;
pub mod proc;
pub mod program;
pub mod smtpd;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use inspector::{Counts, Events, Inspector};
pub use netns::{NetNs, Offloads, Testbed};
pub use smtpd::RecordingSmtpd;

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate has a parent folder")
        .to_path_buf()
}

/// Cargo's target folder: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `inspector` binary under test: `$INSPECTOR_BIN`, else
/// `<target>/release/inspector`.
pub fn inspector_bin() -> PathBuf {
    let path = match std::env::var_os("INSPECTOR_BIN") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("release/inspector"),
    };
    if !path.is_file() {
        panic!(
            "the inspector binary is not at {} (from {}): build it with \
             `cargo build --release -p inspector-userspace`, or point INSPECTOR_BIN at it",
            path.display(),
            if std::env::var_os("INSPECTOR_BIN").is_some() {
                "INSPECTOR_BIN"
            } else {
                "the default path"
            }
        );
    }
    path
}

/// Panics with a clear message unless this process runs as root.
pub fn require_root() {
    if !rustix::process::geteuid().is_root() {
        panic!(
            "these tests need root (network namespaces, XDP, bpffs): run them with \
             `cargo xtask test` as root, or sudo"
        );
    }
}

/// Marker in every name this harness gives to a namespace or pin dir, so
/// that leftovers of a killed run can be recognised (see
/// [`remove_stale_once`]).
pub const NAME_PREFIX: &str = "inspt";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A suffix unique to this process and call: `<pid>x<n>`, at most 11 bytes,
/// so interface names built from it stay within 15 bytes.
pub fn unique_id() -> String {
    format!(
        "{}x{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary folder named `<NAME_PREFIX>-<unique id>-<role>`, removed on
/// drop (and, if a killed run left it, by [`remove_stale_once`]).
pub fn temp_dir(role: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{NAME_PREFIX}-{}-{role}", unique_id()))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary folder for {role}: {e}"))
}

/// The process id encoded in a name made from [`unique_id`] after
/// `<NAME_PREFIX>-`, if any.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NAME_PREFIX)?.strip_prefix('-')?;
    rest.split('x').next()?.parse().ok()
}

/// Whether a process with this id exists.
pub fn pid_alive(pid: i32) -> bool {
    // Signal 0 only checks: EPERM means it exists but is not ours.
    rustix::process::Pid::from_raw(pid).is_some_and(|p| {
        matches!(
            rustix::process::test_kill_process(p),
            Ok(()) | Err(rustix::io::Errno::PERM)
        )
    })
}

/// Removes what a killed earlier run left behind: namespaces, pin dirs
/// under /sys/fs/bpf and temporary folders whose name carries
/// [`NAME_PREFIX`] and the id of a process that no longer exists. (A live
/// owner's objects are left alone, so concurrent runs do not disturb each
/// other.) Runs once per process.
pub fn remove_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(remove_stale);
}

fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| pid != std::process::id() as i32 && !pid_alive(pid))
}

fn remove_stale() {
    let list = proc::run(&mut proc::cmd("ip", &["netns", "list"]));
    for line in list.stdout_str().lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if is_stale(name) {
            eprintln!("removing stale network namespace {name}");
            proc::run(&mut proc::cmd("ip", &["netns", "delete", name]));
        }
    }
    for dir in [inspector::BPFFS_ROOT.into(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_stale(&name) {
                eprintln!("removing stale {}", e.path().display());
                // A Postfix instance of a killed run: stop its master first.
                if let Some(pid) = postfix::master_pid_in(&e.path()) {
                    eprintln!("killing stale Postfix master {pid}");
                    postfix::kill_master(pid);
                }
                // bpffs folders hold only pins: remove those, then the folder.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Polls `probe` until it returns `Some`, with a short growing pause between
/// tries, and panics naming `what` once `timeout` has passed.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Lower-case hex decoding (the recording server writes bytes as hex).
pub fn from_hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// SHA-256 as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_fit_interface_names() {
        let id = unique_id();
        assert!(id.len() <= 11, "{id}");
        assert_ne!(id, unique_id());
        let name = format!("{NAME_PREFIX}-{id}-gw");
        assert_eq!(owner_pid(&name), Some(std::process::id() as i32));
        assert_eq!(owner_pid("other-123x1"), None);
    }

    #[test]
    fn hex_and_sha256() {
        assert_eq!(from_hex("00ff10"), vec![0, 255, 16]);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
