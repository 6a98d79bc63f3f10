//! `inspector attach` running in a namespace, and reading its counters the
//! way an operator does (`inspector stats --json`, a second process).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use rustix::process::Signal;

use crate::{
    inspector_bin,
    netns::NetNs,
    proc::{run, Finished, Proc, WaitError},
    unique_id, NAME_PREFIX,
};

/// Where the host's bpffs is (and where the pin dirs of the tests go).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// What `attach` logs once it is attached and its maps are pinned.
pub const READY_LINE: &str = "attached to";
/// Bound for `attach` to get ready, and for it to stop after a signal.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a bpffs is mounted at `path`.
pub fn is_bpffs(path: &Path) -> bool {
    // BPF_FS_MAGIC from <linux/magic.h>.
    const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u64 == BPF_FS_MAGIC)
}

/// Makes sure a bpffs is mounted at /sys/fs/bpf (the tool would mount it
/// too; doing it here keeps the pin dirs of the tests in the usual place).
pub fn ensure_bpffs() {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return;
    }
    let out = run(&mut crate::proc::cmd(
        "mount",
        &["-t", "bpf", "bpf", BPFFS_ROOT],
    ));
    assert!(
        is_bpffs(root),
        "could not mount a bpffs at {BPFFS_ROOT}: {out}"
    );
}

/// A fresh pin dir path (not created): `/sys/fs/bpf/inspt-<pid>x<n>`.
pub fn unique_pin_dir() -> PathBuf {
    ensure_bpffs();
    crate::remove_stale_once();
    Path::new(BPFFS_ROOT).join(format!("{NAME_PREFIX}-{}", unique_id()))
}

/// The counters of `inspector stats --json`, or of the loaded map.
///
/// The five header-level counters must be there. `midstream`, `dropped` and
/// `flows_created` (from the stateful inspector) are read when present and
/// stay 0 otherwise; other counters are not compared by these tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets_seen: u64,
    pub packets_inspected: u64,
    pub bytes_inspected: u64,
    pub malformed: u64,
    pub fragments: u64,
    /// Payload segments of flows whose start was not seen.
    pub midstream: u64,
    /// Frames the program dropped.
    pub dropped: u64,
    /// Flows started (client SYN of an inspected port).
    pub flows_created: u64,
}

impl Counts {
    /// The counters that must be present, as `inspector stats --json` names
    /// them.
    pub const NAMES: [&'static str; 5] = [
        "packets_seen",
        "packets_inspected",
        "bytes_inspected",
        "malformed",
        "fragments",
    ];

    /// Counters read when present.
    pub const OPTIONAL: [&'static str; 3] = ["midstream", "dropped", "flows_created"];

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "packets_seen" => &mut self.packets_seen,
            "packets_inspected" => &mut self.packets_inspected,
            "bytes_inspected" => &mut self.bytes_inspected,
            "malformed" => &mut self.malformed,
            "fragments" => &mut self.fragments,
            "midstream" => &mut self.midstream,
            "dropped" => &mut self.dropped,
            "flows_created" => &mut self.flows_created,
            _ => return None,
        })
    }

    /// One counter by name; panics on a name [`Counts`] does not hold.
    pub fn get(&self, name: &str) -> u64 {
        let mut c = *self;
        *c.slot(name)
            .unwrap_or_else(|| panic!("Counts has no counter {name}"))
    }

    /// From `(name, value)` pairs; panics if one of [`Counts::NAMES`] is
    /// missing (other names are ignored, so new counters do not break old
    /// tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> Counts {
        let mut c = Counts::default();
        let mut found = Vec::new();
        for (name, v) in pairs {
            if let Some(slot) = c.slot(name) {
                *slot = v;
                found.push(name);
            }
        }
        for n in Self::NAMES {
            assert!(found.contains(&n), "counter {n} is missing");
        }
        c
    }

    /// From the JSON object printed by `inspector stats --json`: the
    /// counters must be unsigned integers; other keys (tables, newer
    /// counters) are ignored.
    pub fn from_json(v: &serde_json::Value) -> Counts {
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("stats JSON is not an object: {v}"));
        Counts::from_pairs(Self::NAMES.iter().chain(&Self::OPTIONAL).filter_map(|k| {
            let v = obj.get(*k)?;
            let n = v
                .as_u64()
                .unwrap_or_else(|| panic!("counter {k} is not an unsigned integer: {v}"));
            Some((*k, n))
        }))
    }

    /// `self - before`, counter by counter (counters never go down).
    pub fn since(&self, before: &Counts) -> Counts {
        let mut d = Counts::default();
        for name in Self::NAMES.iter().chain(&Self::OPTIONAL) {
            let (a, b) = (self.get(name), before.get(name));
            *d.slot(name).unwrap() = a
                .checked_sub(b)
                .unwrap_or_else(|| panic!("counter {name} went down: {b} -> {a}"));
        }
        d
    }

    /// Counter by counter sum.
    pub fn plus(&self, other: &Counts) -> Counts {
        let mut s = *self;
        for name in Self::NAMES.iter().chain(&Self::OPTIONAL) {
            *s.slot(name).unwrap() += other.get(name);
        }
        s
    }
}

/// Runs `inspector stats --json --pin-dir DIR` as a separate process.
pub fn stats_command(pin_dir: &Path) -> Finished {
    let mut c = std::process::Command::new(inspector_bin());
    c.args(["stats", "--json", "--pin-dir"]).arg(pin_dir);
    run(&mut c)
}

/// `inspector stats --json` at `pin_dir`, which must succeed, parsed.
pub fn stats_json(pin_dir: &Path) -> serde_json::Value {
    let out = stats_command(pin_dir);
    out.assert_success();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`inspector stats --json` printed invalid JSON ({e}): {out}"))
}

/// `inspector status --json` at `pin_dir`, which must succeed, parsed.
pub fn status_json(pin_dir: &Path) -> serde_json::Value {
    let mut c = std::process::Command::new(inspector_bin());
    c.args(["status", "--json", "--pin-dir"]).arg(pin_dir);
    let out = run(&mut c);
    out.assert_success();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`inspector status --json` printed invalid JSON ({e}): {out}"))
}

/// One counter of the JSON printed by `inspector stats --json`; panics if
/// it is missing.
pub fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// `(seen, masked)` of a verb slot in `inspector stats --json`.
pub fn verb_counts(stats: &serde_json::Value, verb: &str) -> (u64, u64) {
    let v = &stats["verbs"][verb];
    (
        v["seen"].as_u64().unwrap_or(0),
        v["masked"].as_u64().unwrap_or(0),
    )
}

/// An `attach` that exited before it was ready.
#[derive(Debug)]
pub struct AttachFailed {
    pub status: ExitStatus,
    pub stderr: String,
}

/// How `attach` ended after [`Inspector::stop`].
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stderr: String,
    /// Whether the pin dir still existed once `attach` had exited.
    pub pins_left: bool,
}

/// A running `inspector attach` inside a network namespace. Dropping it
/// sends SIGINT, waits for it to exit, and checks that its pin dir is gone.
pub struct Inspector {
    proc: Option<Proc>,
    pin_dir: PathBuf,
}

/// Builder for an `attach` command line.
pub struct Attach<'a> {
    ns: &'a NetNs,
    ifaces: Vec<String>,
    pin_dir: Option<PathBuf>,
    args: Vec<OsString>,
    wrapper: Vec<OsString>,
}

impl<'a> Attach<'a> {
    pub fn new(ns: &'a NetNs, ifaces: &[&str]) -> Self {
        Attach {
            ns,
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            pin_dir: None,
            args: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Use this pin dir instead of a fresh one.
    pub fn pin_dir(mut self, dir: &Path) -> Self {
        self.pin_dir = Some(dir.to_path_buf());
        self
    }

    /// Extra arguments after `attach --iface ...` (`--object F`, `--port N`).
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Runs the binary through `wrapper...` (inside the namespace), e.g.
    /// `setpriv ...` to drop privileges.
    pub fn wrapped_in(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(OsString::from).collect();
        self
    }

    /// Starts `attach` and waits for it to be ready; `Err` if it exits
    /// first. The [`Inspector`] checks on drop that `attach` stops cleanly
    /// and removes its pins.
    pub fn start(mut self) -> Result<Inspector, AttachFailed> {
        let pin_dir = self.pin_dir.take().unwrap_or_else(unique_pin_dir);
        let proc = self.pin_dir(&pin_dir).spawn().map_err(|out| AttachFailed {
            status: out.status,
            stderr: out.stderr,
        })?;
        Ok(Inspector {
            proc: Some(proc),
            pin_dir,
        })
    }

    /// Starts `attach` and waits for it to be ready, as [`Attach::start`],
    /// but hands over the bare process: for an `attach` whose pins are
    /// meant to outlive it (killed, or `--persist`). `Err` with everything
    /// it printed if it exits first.
    pub fn spawn(self) -> Result<Proc, Finished> {
        ensure_bpffs();
        let pin_dir = self.pin_dir.unwrap_or_else(unique_pin_dir);
        let bin = inspector_bin();
        let mut c = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = self.ns.nsenter(first);
                c.args(rest).arg(&bin);
                c
            }
            None => self.ns.nsenter(&bin),
        };
        c.arg("attach");
        for i in &self.ifaces {
            c.args(["--iface", i]);
        }
        c.arg("--pin-dir").arg(&pin_dir).args(&self.args);
        // The readiness line is logged at info level: make sure it is on.
        c.env("RUST_LOG", "info");
        let mut proc = Proc::spawn(&mut c);
        let ready = |s: &str| {
            s.lines()
                .any(|l| l.contains(READY_LINE) && !l.starts_with("inspector: error"))
        };
        match proc.wait_stderr(ATTACH_TIMEOUT, ready) {
            Ok(()) => Ok(proc),
            Err(WaitError::Eof) => Err(proc.finish(ATTACH_TIMEOUT)),
            Err(WaitError::Timeout) => {
                let stderr = proc.stderr();
                proc.kill();
                panic!(
                    "`{}` printed no `{READY_LINE}` line within {ATTACH_TIMEOUT:?}; stderr:\n{stderr}",
                    proc.what()
                );
            }
        }
    }
}

impl Inspector {
    /// Attaches to `ifaces` in `ns` with a fresh pin dir; panics on failure.
    pub fn attach(ns: &NetNs, ifaces: &[&str]) -> Inspector {
        Attach::new(ns, ifaces)
            .start()
            .unwrap_or_else(|f| panic!("inspector attach failed ({}):\n{}", f.status, f.stderr))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn pid(&self) -> i32 {
        self.proc.as_ref().expect("running").pid()
    }

    /// What `attach` logged so far.
    pub fn stderr(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    /// `inspector stats --json --pin-dir DIR` from a second process.
    pub fn stats_json(&self) -> serde_json::Value {
        stats_json(&self.pin_dir)
    }

    /// The counters, via [`Inspector::stats_json`].
    pub fn stats(&self) -> Counts {
        Counts::from_json(&self.stats_json())
    }

    /// Whether `attach` is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_status().is_none())
    }

    /// Sends SIGINT and waits for `attach` to exit.
    pub fn stop(mut self) -> Stopped {
        self.stop_with(Signal::INT.as_raw())
    }

    /// Sends `signal` and waits for `attach` to exit, like
    /// [`Inspector::stop_with`], but leaves the pin dir as `attach` left it
    /// (for tests of what it leaves; the caller cleans up).
    pub fn stop_leaving_pin_dir(&mut self, signal: i32) -> Stopped {
        let mut proc = self.proc.take().expect("stop called twice");
        proc.signal(signal);
        let out = proc.finish(ATTACH_TIMEOUT);
        Stopped {
            status: out.status,
            stderr: out.stderr,
            pins_left: self.pin_dir.exists(),
        }
    }

    /// Sends `signal` and waits for `attach` to exit; panics if it does not
    /// exit within [`ATTACH_TIMEOUT`].
    pub fn stop_with(&mut self, signal: i32) -> Stopped {
        let mut proc = self.proc.take().expect("stop called twice");
        proc.signal(signal);
        let out = proc.finish(ATTACH_TIMEOUT);
        let pins_left = self.pin_dir.exists();
        if pins_left {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        Stopped {
            status: out.status,
            stderr: out.stderr,
            pins_left,
        }
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        if self.proc.is_none() {
            return;
        }
        let panicking = std::thread::panicking();
        let mut proc = self.proc.take().unwrap();
        proc.signal(Signal::INT.as_raw());
        let exited = proc.wait_timeout(ATTACH_TIMEOUT);
        let stderr = proc.stderr();
        drop(proc); // SIGKILL if still running
        let pins_left = self.pin_dir.exists();
        if pins_left {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        if panicking {
            return;
        }
        match exited {
            None => {
                panic!("inspector attach ignored SIGINT for {ATTACH_TIMEOUT:?}; stderr:\n{stderr}")
            }
            Some(s) if !s.success() => {
                panic!("inspector attach exited with {s} after SIGINT; stderr:\n{stderr}")
            }
            Some(_) => {}
        }
        assert!(
            !pins_left,
            "inspector attach left its pin dir {} behind after SIGINT; stderr:\n{stderr}",
            self.pin_dir.display()
        );
    }
}

/// `inspector events --json` on a pin directory, read while it runs. (The
/// events come through the running `attach`'s socket in the pin directory,
/// so no network namespace is needed.)
pub struct Events {
    proc: Proc,
}

impl Events {
    /// Starts `inspector events --json --pin-dir PIN_DIR`.
    pub fn start(pin_dir: &Path) -> Events {
        let mut c = std::process::Command::new(inspector_bin());
        c.args(["events", "--json", "--pin-dir"]).arg(pin_dir);
        Events {
            proc: Proc::spawn(&mut c),
        }
    }

    /// Every complete line printed so far, parsed; a line that is not a
    /// JSON event fails the test.
    pub fn all(&self) -> Vec<serde_json::Value> {
        let out = self.proc.stdout();
        let complete = match out.iter().rposition(|b| *b == b'\n') {
            Some(i) => &out[..=i],
            None => &[][..],
        };
        String::from_utf8_lossy(complete)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}"))
            })
            .collect()
    }

    /// Waits until at least `n` events for which `matches` holds were
    /// printed (`what` names them in the timeout's message); returns those.
    pub fn wait_for(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        crate::wait_until(
            &format!("{n} {what} from `inspector events --json`"),
            timeout,
            || {
                let events: Vec<_> = self.all().into_iter().filter(&matches).collect();
                (events.len() >= n).then_some(events)
            },
        )
    }

    /// Waits until at least `n` events of `kind` (masked, dropped,
    /// midstream...) were printed; returns those.
    pub fn wait(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        self.wait_for(&format!("{kind} events"), n, Duration::from_secs(20), |e| {
            e["kind"] == kind
        })
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.proc.try_status().is_some()
    }

    /// Waits up to `timeout` for it to exit by itself (after `attach`
    /// stopped for good) and returns what it printed.
    pub fn finish(self, timeout: Duration) -> Finished {
        self.proc.finish(timeout)
    }

    /// Stops it (SIGINT) and returns what it printed.
    pub fn stop(mut self) -> Finished {
        self.proc.signal(Signal::INT.as_raw());
        self.proc.finish(Duration::from_secs(10))
    }
}
