//! `cargo xtask demo`: a mail gateway in network namespaces, the inspector
//! attached to both of its interfaces, and real SMTP sessions through it.
//!
//!     client ns  ==veth==  gateway ns (forwarding, inspector)  ==veth==  server ns
//!     10.200.1.2           10.200.1.1 | 10.200.2.1                      10.200.2.2
//!
//! Client: swaks and a raw socket; server: the test kit's recording aiosmtpd
//! (its replies, and its record, show what it received). The gateway, the
//! server and the inspector are the kit's ([`inspector_testkit`]), so
//! everything is removed on exit, also after an error.

use std::{process::Command, time::Duration};

use anyhow::{bail, Result};
use inspector_testkit::{
    client, inspector_bin,
    netns::{addr::SERVER_V4, Offloads, Testbed},
    proc::{self, Proc},
    Inspector, RecordingSmtpd,
};
use rustix::process::Signal;

use crate::util::step;

/// Runs `cmd` and shows what it printed.
fn show(cmd: &mut Command) {
    let out = proc::run(cmd);
    print!("{}", out.stdout_str());
    eprint!("{}", out.stderr);
}

/// `inspector ARGS --pin-dir DIR` for the attached inspector.
fn inspector(i: &Inspector, args: &[&str]) -> Command {
    let mut c = Command::new(inspector_bin());
    c.args(args).arg("--pin-dir").arg(i.pin_dir());
    c
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

fn raw_session(bed: &Testbed, commands: &[&str]) {
    let mut c = bed.client.exec("/usr/bin/python3");
    c.args(["-c", RAW_CLIENT]).args(commands);
    show(&mut c);
}

pub fn run() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("cargo xtask demo needs root (network namespaces, XDP, bpffs)");
    }
    step("demo: building the gateway (client | gateway | server network namespaces)");
    let bed = Testbed::new(Offloads::Default);

    step("demo: starting a real SMTP server (aiosmtpd, recording) on 10.200.2.2:25");
    let server = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);

    let ifaces = bed.gateway_ifaces();
    step(&format!(
        "demo: inspector attach --iface {} --iface {} (in the gateway namespace)",
        ifaces[0], ifaces[1]
    ));
    let insp = Inspector::attach(&bed.gateway, &ifaces);
    let mut events = Proc::spawn(&mut inspector(&insp, &["events"]));

    step("demo: swaks sends a mail whose body holds command-like lines: they pass untouched");
    show(
        client::swaks(
            &bed.client,
            SERVER_V4,
            "alice@example.org",
            "bob@example.com",
        )
        .args([
            "--body",
            "STARTTLS\nVERB x\n..\nBDAT 10\nA body is data: these lines pass untouched.\n",
        ])
        .args(["--header", "Subject: inspector demo"]),
    );

    step("demo: a raw session: disallowed verbs (any case, leading space) reach the server masked");
    raw_session(
        &bed,
        &[
            "EHLO demo",
            "STARTTLS",
            "verb",
            "XEXCH50",
            "x-foo bar",
            "VRFY bob",
            "QUIT",
        ],
    );

    step("demo: the operator denies VRFY, live, without reloading anything");
    show(&mut inspector(&insp, &["policy", "deny", "VRFY"]));
    raw_session(&bed, &["EHLO demo", "VRFY bob", "QUIT"]);
    show(&mut inspector(&insp, &["policy", "allow", "VRFY"]));

    step("demo: what the server received, command by command (its own record)");
    for line in server.command_lines() {
        println!("    {}", String::from_utf8_lossy(&line).trim_end());
    }

    step("demo: inspector stats");
    show(&mut inspector(&insp, &["stats"]));

    step("demo: inspector events (what was masked, where)");
    events.signal(Signal::INT.as_raw());
    let ev = events.finish(Duration::from_secs(10));
    for l in ev.stdout_str().lines() {
        println!("    {l}");
    }

    step("demo: detaching and removing the namespaces");
    drop(insp);
    drop(server);
    drop(bed);
    println!("\ndemo finished: see README.md for deploying on a real gateway");
    Ok(())
}
