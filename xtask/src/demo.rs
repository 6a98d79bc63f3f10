//! `cargo xtask demo`: a mail gateway in network namespaces, the inspector
//! attached to both of its interfaces, and real SMTP sessions through it.
//!
//!     client ns  ==veth==  gateway ns (forwarding, inspector)  ==veth==  server ns
//!     10.200.1.2           10.200.1.1 | 10.200.2.1                      10.200.2.2
//!
//! Client: swaks and a raw socket; server: aiosmtpd (its replies show what
//! it received). Everything is removed on exit, also after an error.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::util::{root, step};

struct Gateway {
    suffix: String,
    children: Vec<Child>,
    pin_dir: PathBuf,
}

impl Gateway {
    fn ns(&self, role: &str) -> String {
        format!("demo{role}{}", self.suffix)
    }

    fn create() -> Result<Self> {
        let gw = Gateway {
            suffix: std::process::id().to_string(),
            children: Vec::new(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/inspector-demo-{}", std::process::id())),
        };
        let (c, g, s) = (gw.ns("c"), gw.ns("g"), gw.ns("s"));
        let sh = |args: &str| -> Result<()> {
            let status = Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .context("running ip")?;
            if !status.success() {
                bail!("`ip {args}` failed");
            }
            Ok(())
        };
        for n in [&c, &g, &s] {
            sh(&format!("netns add {n}"))?;
            sh(&format!("-n {n} link set lo up"))?;
        }
        sh(&format!(
            "link add dc0 netns {c} type veth peer name dg0 netns {g}"
        ))?;
        sh(&format!(
            "link add ds0 netns {s} type veth peer name dg1 netns {g}"
        ))?;
        sh(&format!("-n {c} addr add 10.200.1.2/24 dev dc0"))?;
        sh(&format!("-n {g} addr add 10.200.1.1/24 dev dg0"))?;
        sh(&format!("-n {g} addr add 10.200.2.1/24 dev dg1"))?;
        sh(&format!("-n {s} addr add 10.200.2.2/24 dev ds0"))?;
        sh(&format!("-n {c} link set dc0 up"))?;
        sh(&format!("-n {g} link set dg0 up"))?;
        sh(&format!("-n {g} link set dg1 up"))?;
        sh(&format!("-n {s} link set ds0 up"))?;
        sh(&format!("-n {c} route add default via 10.200.1.1"))?;
        sh(&format!("-n {s} route add default via 10.200.2.1"))?;
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &g,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()?;
        if !st.success() {
            bail!("enabling forwarding in {g} failed");
        }
        Ok(gw)
    }

    /// Runs the inspector binary in the gateway namespace. `nsenter --net`
    /// keeps the host's /sys/fs/bpf, so every invocation sees the pins.
    fn inspector(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.ns("g")))
            .arg(root().join("target/release/inspector"));
        c
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for c in &mut self.children {
            unsafe { libc_kill(c.id() as i32, 2) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for role in ["c", "g", "s"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Waits until `line` appears on the child's stderr.
fn wait_for_line(child: &mut Child, needle: &str) -> Result<()> {
    let stderr = child.stderr.take().context("no stderr")?;
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("inspector exited before it was ready");
        }
        eprint!("    {line}");
        if line.contains(needle) {
            // Keep forwarding its log in the background.
            std::thread::spawn(move || {
                let mut l = String::new();
                while reader.read_line(&mut l).unwrap_or(0) > 0 {
                    eprint!("    {l}");
                    l.clear();
                }
            });
            return Ok(());
        }
    }
}

fn wait_for_port(ns: &str, addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Hltn", &format!("src {addr}")])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the server in {ns} did not start listening on {addr}")
}

fn show(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

const RAW_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("10.200.2.2", 25)); f = s.makefile("rb")
def reply():
    while True:
        l = f.readline().decode().rstrip()
        print("    <- " + l)
        if l[3:4] != "-":
            return
reply()
for cmd in sys.argv[1:]:
    print("    -> " + cmd)
    s.sendall(cmd.encode() + b"\r\n")
    reply()
"#;

fn raw_session(gw: &Gateway, commands: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &gw.ns("c"),
        "/usr/bin/python3",
        "-c",
        RAW_CLIENT,
    ]);
    c.args(commands);
    show(&mut c)
}

pub fn run() -> Result<()> {
    step("demo: building the gateway (client | gateway | server network namespaces)");
    let mut gw = Gateway::create()?;

    step("demo: starting a real SMTP server (aiosmtpd) on 10.200.2.2:25");
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &gw.ns("s"),
            "/usr/bin/python3",
            "-m",
            "aiosmtpd",
            "-n",
        ])
        .args(["-l", "10.200.2.2:25", "-c", "aiosmtpd.handlers.Sink"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting aiosmtpd")?;
    gw.children.push(server);
    wait_for_port(&gw.ns("s"), "10.200.2.2:25")?;

    step("demo: inspector attach --iface dg0 --iface dg1 (in the gateway namespace)");
    let mut att = gw
        .inspector()
        .args(["attach", "--iface", "dg0", "--iface", "dg1", "--pin-dir"])
        .arg(&gw.pin_dir)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting inspector attach")?;
    let ready = wait_for_line(&mut att, "attached to");
    gw.children.push(att);
    ready?;

    let mut events = gw
        .inspector()
        .args(["events", "--pin-dir"])
        .arg(&gw.pin_dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting inspector events")?;
    let ev_out = events.stdout.take().context("no stdout")?;
    gw.children.push(events);
    let ev_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(ev_out).lines().map_while(|l| l.ok()) {
            lines.push(l);
        }
        lines
    });

    step("demo: swaks sends a mail whose body holds command-like lines: they pass untouched");
    show(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &gw.ns("c"),
                "swaks",
                "--server",
                "10.200.2.2",
            ])
            .args(["--from", "alice@example.org", "--to", "bob@example.com"])
            .args([
                "--body",
                "STARTTLS\nVERB x\n..\nBDAT 10\nA body is data: these lines pass untouched.\n",
            ])
            .args(["--header", "Subject: inspector demo"]),
    )?;

    step("demo: a raw session: disallowed verbs (any case, leading space) reach the server masked");
    raw_session(
        &gw,
        &[
            "EHLO demo",
            "STARTTLS",
            "verb",
            "XEXCH50",
            "x-foo bar",
            "VRFY bob",
            "QUIT",
        ],
    )?;

    step("demo: the operator denies VRFY, live, without reloading anything");
    show(
        gw.inspector()
            .args(["policy", "deny", "VRFY", "--pin-dir"])
            .arg(&gw.pin_dir),
    )?;
    raw_session(&gw, &["EHLO demo", "VRFY bob", "QUIT"])?;
    show(
        gw.inspector()
            .args(["policy", "allow", "VRFY", "--pin-dir"])
            .arg(&gw.pin_dir),
    )?;

    step("demo: inspector stats");
    show(gw.inspector().args(["stats", "--pin-dir"]).arg(&gw.pin_dir))?;

    step("demo: inspector events (what was masked, where)");
    // Stop the events reader (the Drop of `gw` does it) and print its lines.
    let events_child = gw.children.pop();
    if let Some(mut c) = events_child {
        unsafe { libc_kill(c.id() as i32, 2) };
        let _ = c.wait();
    }
    for l in ev_thread.join().unwrap_or_default() {
        println!("    {l}");
    }

    step("demo: detaching and removing the namespaces");
    drop(gw);
    println!("\ndemo finished: see README.md for deploying on a real gateway");
    Ok(())
}
