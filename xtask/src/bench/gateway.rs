//! The test bed of TESTBED.md, built for the benchmark: three network
//! namespaces, two veth pairs, forwarding in the middle.
//!
//! ```text
//! client ns  ==veth==  gateway ns (forwarding)  ==veth==  server ns
//! 10.200.1.2/24        10.200.1.1 | 10.200.2.1            10.200.2.2/24
//! fd00:200:1::2/64     fd00:200:1::1 | fd00:200:2::1      fd00:200:2::2/64
//! ```
//!
//! Names carry `inbench-<pid>`; every namespace (and with it every veth) is
//! deleted when the [`Gateway`] is dropped, also after an error. Leftovers
//! of a killed run (its pid is gone) are removed by [`remove_stale`].
//! Background programs are [`Daemon`]s, stopped on drop; processes that need
//! to be in a namespace without a child process use [`in_netns`].

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::interrupted;

/// Prefix of every namespace and pin dir this benchmark creates.
pub const PREFIX: &str = "inbench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Gateway,
    Server,
}

pub struct Gateway {
    pub id: String,
    /// Namespaces created so far (all three once built).
    made: Vec<String>,
    pub gw_client_if: String,
    pub gw_server_if: String,
    pub client_if: String,
    pub server_if: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Gateway {
    pub fn ns(&self, side: Side) -> String {
        let role = match side {
            Side::Client => "c",
            Side::Gateway => "g",
            Side::Server => "s",
        };
        format!("{PREFIX}-{}-{role}", self.id)
    }

    /// The namespace's bind mount, for `nsenter --net=` and `setns`.
    pub fn ns_path(&self, side: Side) -> PathBuf {
        Path::new("/var/run/netns").join(self.ns(side))
    }

    /// Builds the three namespaces, wired and addressed, forwarding on.
    pub fn build() -> Result<Gateway> {
        let id = std::process::id().to_string();
        let mut gw = Gateway {
            client_if: format!("bc{id}"),
            gw_client_if: format!("bgc{id}"),
            gw_server_if: format!("bgs{id}"),
            server_if: format!("bs{id}"),
            id,
            made: Vec::new(),
        };
        for side in [Side::Client, Side::Gateway, Side::Server] {
            let n = gw.ns(side);
            ip(&["netns", "add", &n])?;
            gw.made.push(n.clone());
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
            for (k, v) in [
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                // Thousands of short sessions per run: reuse TIME_WAIT
                // ports, and use the whole port range.
                ("net.ipv4.tcp_tw_reuse", "1"),
                ("net.ipv4.ip_local_port_range", "1024 65000"),
                ("net.core.somaxconn", "16384"),
            ] {
                gw.sysctl(side, k, v)?;
            }
        }
        let (c, g, s) = (
            gw.ns(Side::Client),
            gw.ns(Side::Gateway),
            gw.ns(Side::Server),
        );
        ip(&[
            "-n",
            &c,
            "link",
            "add",
            &gw.client_if,
            "type",
            "veth",
            "peer",
            "name",
            &gw.gw_client_if,
            "netns",
            &g,
        ])?;
        ip(&[
            "-n",
            &g,
            "link",
            "add",
            &gw.gw_server_if,
            "type",
            "veth",
            "peer",
            "name",
            &gw.server_if,
            "netns",
            &s,
        ])?;
        let plan = [
            (&c, &gw.client_if, "10.200.1.2/24", "fd00:200:1::2/64"),
            (&g, &gw.gw_client_if, "10.200.1.1/24", "fd00:200:1::1/64"),
            (&g, &gw.gw_server_if, "10.200.2.1/24", "fd00:200:2::1/64"),
            (&s, &gw.server_if, "10.200.2.2/24", "fd00:200:2::2/64"),
        ];
        for (ns, dev, v4, v6) in plan {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", &c, "route", "add", "default", "via", "10.200.1.1"])?;
        ip(&[
            "-n",
            &c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:200:1::1",
        ])?;
        ip(&["-n", &s, "route", "add", "default", "via", "10.200.2.1"])?;
        ip(&[
            "-n",
            &s,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:200:2::1",
        ])?;
        gw.sysctl(Side::Gateway, "net.ipv4.ip_forward", "1")?;
        gw.sysctl(Side::Gateway, "net.ipv6.conf.all.forwarding", "1")?;
        Ok(gw)
    }

    pub fn sysctl(&self, side: Side, key: &str, value: &str) -> Result<()> {
        let mut c = self.exec(side, "sysctl");
        c.args(["-qw", &format!("{key}={value}")]);
        let st = c.status().context("running sysctl")?;
        if !st.success() {
            bail!("sysctl {key}={value} in {} failed", self.ns(side));
        }
        Ok(())
    }

    /// `ip netns exec NS program` (for clients and servers).
    pub fn exec(&self, side: Side, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(side), program]);
        c
    }

    /// `nsenter --net=PATH -- program`: the network namespace only, so the
    /// host's /sys/fs/bpf (and its pins) stays visible. For `inspector`.
    pub fn nsenter(&self, side: Side, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(side).display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Waits until something listens on `addr` (`a.b.c.d:port`) in `side`.
    pub fn wait_listening(&self, side: Side, addr: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let out = self
                .exec(side, "ss")
                .args(["-Hltn", &format!("src {addr}")])
                .output()?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        bail!("nothing listens on {addr} in {}", self.ns(side))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for n in self.made.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn pid_alive(pid: i32) -> bool {
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Removes namespaces and pin dirs of earlier runs whose process is gone.
pub fn remove_stale() {
    let owner = |name: &str| -> Option<i32> {
        name.strip_prefix(PREFIX)?
            .strip_prefix('-')?
            .split('-')
            .next()?
            .parse()
            .ok()
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if owner(name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("bench: removing stale namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("bench: removing stale pin dir /sys/fs/bpf/{name}");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A background process, stopped (SIGTERM, then SIGKILL after 5 s) when
/// dropped.
pub struct Daemon {
    pub name: String,
    child: Child,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Daemon> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
        })
    }

    /// Waits until `needle` appears on the child's stderr (which must be
    /// piped), then keeps draining stderr in the background (lines that
    /// mention an error are shown).
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let stderr = self.child.stderr.take().context("stderr not piped")?;
        let (tx, rx) = mpsc::channel::<String>();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line.clone()).is_err() {
                            let l = line.to_lowercase();
                            if l.contains("error") || l.contains("warn") {
                                eprint!("    [{name}] {line}");
                            }
                        }
                    }
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => {
                    seen.push_str(&l);
                    if l.contains(needle) {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{} exited before it was ready:\n{seen}", self.name)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if interrupted() {
                bail!("interrupted while waiting for {}", self.name);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print `{needle}` in {timeout:?}:\n{seen}",
                    self.name
                );
            }
        }
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited unexpectedly ({st})", self.name);
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process: SIGTERM, wait, SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion within `timeout` and returns how long it
/// took; fails if it fails (with its stderr), times out or is interrupted.
pub fn timed(cmd: &mut Command, timeout: Duration) -> Result<Duration> {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = std::io::Read::read_to_string(e, &mut s);
        }
        s
    });
    loop {
        if let Some(st) = child.try_wait()? {
            let took = t0.elapsed();
            let err = reader.join().unwrap_or_default();
            if !st.success() {
                bail!("{cmd:?} failed ({st}): {}", err.trim());
            }
            return Ok(took);
        }
        if t0.elapsed() > timeout || interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?} (or was interrupted)");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path`
/// (sockets it creates live there; the rest of the process is unaffected).
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in a network namespace panicked"))?
}

/// A thread that stays in a network namespace and holds a value there
/// until dropped (for XDP links attached from this process: detaching must
/// happen in the namespace where the interface is).
pub struct NetnsHolder {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetnsHolder {
    pub fn start<T: 'static>(
        path: &Path,
        make: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<NetnsHolder> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()).context("setns"));
                return;
            }
            match make() {
                Ok(value) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(value);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let r = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the namespace thread died"))?;
        let holder = NetnsHolder {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        r.map(|()| holder)
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
