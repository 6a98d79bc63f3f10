//! Running the inspector as an operator does (README "Deploy on a gateway
//! host"), end to end on the test bed of `docs/testbed.md`: `status`, a daemon that
//! dies mid-session and the takeover by the next `attach`, `--persist` and
//! `detach`, `stats --watch`, the Prometheus endpoint, policy files, live
//! policy changes and the flow-table size.
//!
//! Everything is judged by what really happened: the bytes the recording
//! server received, the kernel's own view (`ip -d link`, `bpftool link`,
//! TCX queries), the pins on bpffs, and counters read by a second process.
//! The SMTP client here is a plain socket opened inside the client
//! namespace and driven step by step by the test.
//!
//! Needs root; run with `--test-threads=1`.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use inspector_common::{counters::Counter, verbs::DEFAULT_ALLOWED};
use inspector_tests::{
    assert_attach_failed, assert_attach_refused, assert_one_line_error,
    client::{code_of, Smtp},
    inspector::{counter, unique_pin_dir, verb_counts, Attach, ATTACH_TIMEOUT},
    inspector_bin,
    netns::{addr::SERVER_V4, in_netns},
    proc::{run, Finished, Proc},
    wait_until, Inspector, NetNs, Offloads, RecordingSmtpd, Testbed,
};
use serde_json::Value;

/// Bound for one SMTP reply, and for counters or kernel state to settle.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------
// Sockets inside a namespace (the kit's `in_netns` and `client::Smtp`)
// ---------------------------------------------------------------------

fn show(b: &[u8]) -> String {
    b.iter()
        .flat_map(|c| std::ascii::escape_default(*c))
        .map(char::from)
        .collect()
}

/// The recording server's connection id for the client at `local`.
fn conn_of(smtpd: &RecordingSmtpd, local: SocketAddr) -> u64 {
    wait_until("the server to record the connection", STEP_TIMEOUT, || {
        smtpd.records().iter().find_map(|r| {
            let peer = r["peer"].as_array()?;
            (r["event"] == "connect"
                && peer.first()?.as_str()? == local.ip().to_string()
                && peer.get(1)?.as_u64()? == local.port() as u64)
                .then(|| r["conn"].as_u64())
                .flatten()
        })
    })
}

/// Every line the server read on the connection of the client at `local`,
/// in `phase` ("command" or "data"), as text with escapes.
fn server_lines(smtpd: &RecordingSmtpd, local: SocketAddr, phase: &str) -> Vec<String> {
    let conn = conn_of(smtpd, local);
    smtpd
        .records()
        .iter()
        .filter(|r| r["event"] == "line" && r["conn"] == conn && r["phase"] == phase)
        .map(|r| show(&inspector_tests::from_hex(r["hex"].as_str().unwrap())))
        .collect()
}

// ---------------------------------------------------------------------
// The inspector, run as an operator runs it
// ---------------------------------------------------------------------

/// `inspector ARGS...` run inside the gateway namespace (where an operator
/// types it), to completion.
fn cli(ns: &NetNs, args: &[&str]) -> Finished {
    let mut c = ns.nsenter(inspector_bin());
    c.args(args);
    run(&mut c)
}

fn cli_ok(ns: &NetNs, args: &[&str]) -> Finished {
    let out = cli(ns, args);
    out.assert_success();
    out
}

fn pin_arg(dir: &Path) -> &str {
    dir.to_str().expect("pin dir paths are UTF-8")
}

fn json_of(out: &Finished) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("invalid JSON ({e}) from {out}"))
}

fn status_json(ns: &NetNs, dir: &Path) -> Value {
    json_of(&cli_ok(
        ns,
        &["status", "--json", "--pin-dir", pin_arg(dir)],
    ))
}

fn status_text(ns: &NetNs, dir: &Path) -> String {
    cli_ok(ns, &["status", "--pin-dir", pin_arg(dir)]).stdout_str()
}

fn stats(ns: &NetNs, dir: &Path) -> Value {
    json_of(&cli_ok(ns, &["stats", "--json", "--pin-dir", pin_arg(dir)]))
}

fn policy_show(ns: &NetNs, dir: &Path) -> (String, Value) {
    let text = cli_ok(ns, &["policy", "show", "--pin-dir", pin_arg(dir)]).stdout_str();
    let json = json_of(&cli_ok(
        ns,
        &["policy", "show", "--json", "--pin-dir", pin_arg(dir)],
    ));
    (text, json)
}

fn assert_failed(what: &str, out: &Finished, mentions: &[&str]) {
    assert_one_line_error(what, out.status.code(), &out.stderr, mentions);
    assert!(out.stdout.is_empty(), "{what}: printed on stdout: {out}");
}

/// Refused input: exit 2, one line, nothing on stdout.
fn assert_refused(what: &str, out: &Finished, mentions: &[&str]) {
    inspector_tests::assert_one_line_refusal(what, out.status.code(), &out.stderr, mentions);
    assert!(out.stdout.is_empty(), "{what}: printed on stdout: {out}");
}

/// A pin dir for a test, removed on drop even if the test failed: by
/// `inspector detach` (which also detaches its links), then by force.
/// Declare it before every process that uses it, so that they stop first.
struct Pins {
    path: PathBuf,
}

impl Pins {
    fn new() -> Pins {
        Pins {
            path: unique_pin_dir(),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn arg(&self) -> &str {
        pin_arg(&self.path)
    }

    fn link(&self, hook: &str, iface: &str) -> PathBuf {
        Self::link_of(&self.path, hook, iface)
    }

    fn link_of(dir: &Path, hook: &str, iface: &str) -> PathBuf {
        dir.join("links").join(format!("{hook}:{iface}"))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        let mut c = Command::new(inspector_bin());
        c.args(["detach", "--pin-dir"]).arg(&self.path);
        let out = run(&mut c);
        if self.path.exists() {
            if !std::thread::panicking() {
                eprintln!("warning: detach did not remove the pin dir: {out}");
            }
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// An `inspector attach` whose pins outlive it (killed, or `--persist`),
/// unlike the harness's [`Inspector`], which checks they are gone. On drop
/// it gets SIGTERM, then SIGKILL; what it leaves is the business of
/// [`Pins`].
struct Daemon {
    proc: Option<Proc>,
}

impl Daemon {
    fn try_start(
        ns: &NetNs,
        ifaces: &[&str],
        pin_dir: &Path,
        args: &[&str],
    ) -> Result<Daemon, Finished> {
        let attach = args
            .iter()
            .fold(Attach::new(ns, ifaces).pin_dir(pin_dir), |a, x| a.arg(x));
        attach.spawn().map(|p| Daemon { proc: Some(p) })
    }

    fn start(ns: &NetNs, ifaces: &[&str], pin_dir: &Path, args: &[&str]) -> Daemon {
        Self::try_start(ns, ifaces, pin_dir, args)
            .unwrap_or_else(|out| panic!("inspector attach failed: {out}"))
    }

    fn pid(&self) -> i32 {
        self.proc.as_ref().expect("running").pid()
    }

    fn stderr(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to end.
    fn stop(&mut self, signal: i32) -> Finished {
        let mut p = self.proc.take().expect("stop called twice");
        p.signal(signal);
        p.finish(ATTACH_TIMEOUT)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(ATTACH_TIMEOUT);
        }
    }
}

// ---------------------------------------------------------------------
// Kernel state
// ---------------------------------------------------------------------

/// The XDP program id `ip -d link show` reports on `iface` (checking the
/// text form shows it too).
fn ip_link_xdp(ns: &NetNs, iface: &str) -> Option<u64> {
    let id = ns.xdp_prog_id(iface);
    let text = ns.link_text(iface);
    match id {
        Some(id) => assert!(
            text.contains(&format!("prog/xdp id {id}")),
            "`ip -d link show {iface}` does not show program {id}:\n{text}"
        ),
        None => assert!(
            !text.contains("prog/xdp"),
            "`ip -d link show {iface}` shows an XDP program its JSON does not:\n{text}"
        ),
    }
    id
}

/// The program id of a pinned link, as `bpftool link show pinned` says.
fn bpftool_link_prog(path: &Path) -> u64 {
    let mut c = Command::new("bpftool");
    c.args(["-j", "link", "show", "pinned"]).arg(path);
    let out = run(&mut c);
    out.assert_success();
    let v = json_of(&out);
    v["prog_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no prog_id from bpftool: {v}"))
}

/// The programs attached to `iface` on TCX ingress or egress, as the kernel
/// reports them (BPF_PROG_QUERY inside the namespace).
fn tcx_progs(ns: &NetNs, iface: &str, ingress: bool) -> Vec<u64> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let iface = iface.to_string();
    in_netns(ns, move || {
        let t = if ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        let (_, progs) = SchedClassifier::query_tcx(&iface, t)
            .unwrap_or_else(|e| panic!("querying TCX {t:?} on {iface}: {e}"));
        progs.iter().map(|p| p.id() as u64).collect()
    })
}

fn assert_no_xdp(bed: &Testbed, what: &str) {
    for (ns, i) in bed.veths() {
        assert_eq!(
            ip_link_xdp(ns, i),
            None,
            "{what}: an XDP program is attached to {i}:\n{}",
            ns.link_text(i)
        );
    }
}

/// The one XDP program id on both gateway interfaces.
fn gateway_xdp(bed: &Testbed) -> u64 {
    let [a, b] = bed.gateway_ifaces();
    let ia = ip_link_xdp(&bed.gateway, a).unwrap_or_else(|| panic!("no XDP program on {a}"));
    let ib = ip_link_xdp(&bed.gateway, b).unwrap_or_else(|| panic!("no XDP program on {b}"));
    assert_eq!(ia, ib, "one program on both gateway interfaces");
    ia
}

fn assert_pinned(pins: &Pins, ifaces: &[&str], what: &str) {
    for n in [
        "INSPECTOR_COUNTERS",
        "INSPECTOR_FLOWS",
        "INSPECTOR_POLICY",
        "INSPECTOR_CONFIG",
    ] {
        assert!(
            pins.path().join(n).exists(),
            "{what}: pin {n} is missing in {}",
            pins.path().display()
        );
    }
    for i in ifaces {
        assert!(
            pins.link("xdp", i).exists(),
            "{what}: the link of {i} is not pinned"
        );
    }
}

fn hooks_of(status: &Value) -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> = status["attached"]
        .as_array()
        .unwrap_or_else(|| panic!("no `attached` list in {status}"))
        .iter()
        .map(|h| {
            (
                h["interface"].as_str().unwrap().to_string(),
                h["hook"].as_str().unwrap().to_string(),
                h["program_id"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn default_allowed_sorted() -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn new_bed(offloads: Offloads) -> (Testbed, RecordingSmtpd) {
    let bed = Testbed::new(offloads);
    let smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);
    (bed, smtpd)
}

/// One short session: EHLO, STARTTLS (masked by the default policy), QUIT.
/// Returns the client's address.
fn masked_starttls_session(bed: &Testbed, smtpd: &RecordingSmtpd) -> SocketAddr {
    let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 500);
    c.expect("QUIT", 221);
    let lines = server_lines(smtpd, c.local, "command");
    assert_eq!(
        lines,
        ["EHLO client.test\\r\\n", "XXXXXXXX\\r\\n", "QUIT\\r\\n"]
    );
    c.local
}

// ---------------------------------------------------------------------
// 1. status
// ---------------------------------------------------------------------

/// `status` and `status --json` while `attach` runs: every interface with
/// hook `xdp` and the program id the kernel reports, the daemon's pid, the
/// ports, the allowed verbs and the flow table.
#[test]
fn status_shows_hooks_program_ids_daemon_ports_policy_and_flows() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let inspector = Inspector::attach(&bed.gateway, &ifaces);
    let dir = inspector.pin_dir().to_path_buf();
    let prog = gateway_xdp(&bed);

    // A session held open: one tracked, active flow.
    let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
    c.expect("EHLO client.test", 250);

    let st = status_json(&bed.gateway, &dir);
    let mut want: Vec<(String, String, u64)> = ifaces
        .iter()
        .map(|i| (i.to_string(), "xdp".to_string(), prog))
        .collect();
    want.sort();
    assert_eq!(hooks_of(&st), want, "status --json: {st}");
    for i in ifaces {
        assert_eq!(
            bpftool_link_prog(&Pins::link_of(&dir, "xdp", i)),
            prog,
            "the pinned link of {i} runs another program"
        );
    }
    assert_eq!(
        st["daemon_pid"].as_i64(),
        Some(inspector.pid() as i64),
        "daemon pid: {st}"
    );
    assert_eq!(st["pin_dir"].as_str(), Some(pin_arg(&dir)));
    assert_eq!(st["ports"], serde_json::json!([25, 587]), "{st}");
    assert_eq!(strings(&st["allowed"]), default_allowed_sorted(), "{st}");
    assert_eq!(st["monitor"], false);
    assert_eq!(st["midstream"], "drop", "fail closed by default");
    assert_eq!(st["fragments"], "drop");
    assert_eq!(st["flows_tracked"].as_u64(), Some(1), "{st}");
    assert_eq!(st["flows_active"].as_u64(), Some(1), "{st}");
    assert!(st["uptime_secs"].as_u64().is_some(), "{st}");

    let text = status_text(&bed.gateway, &dir);
    assert!(
        text.contains(&format!("daemon:     running (pid {})", inspector.pid())),
        "{text}"
    );
    for i in ifaces {
        let line = text
            .lines()
            .find(|l| l.starts_with("attached:") && l.contains(i))
            .unwrap_or_else(|| panic!("status does not list {i}:\n{text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words,
            ["attached:", i, "xdp", "program", "id", &prog.to_string()],
            "{text}"
        );
    }
    assert!(text.contains("ports:      25 587\n"), "{text}");
    assert!(
        text.contains(&format!(
            "allowed:    {}\n",
            default_allowed_sorted().join(" ")
        )),
        "{text}"
    );
    assert!(text.contains("flows:      1 tracked, 1 active\n"), "{text}");

    // The session ends: the entry stays (expired later), no longer active.
    c.expect("QUIT", 221);
    drop(c);
    smtpd.wait_closed(1, STEP_TIMEOUT);
    let st = wait_until("the flow to be seen closed", STEP_TIMEOUT, || {
        let st = status_json(&bed.gateway, &dir);
        (st["flows_active"].as_u64() == Some(0)).then_some(st)
    });
    assert_eq!(st["flows_tracked"].as_u64(), Some(1), "{st}");
    let text = status_text(&bed.gateway, &dir);
    assert!(text.contains("flows:      1 tracked, 0 active\n"), "{text}");
}

/// In TC mode, `status` lists a tc-ingress and a tc-egress hook per
/// interface, with the program the kernel has on each TCX hook.
#[test]
fn status_in_tc_mode_shows_ingress_and_egress_per_interface() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let inspector = Attach::new(&bed.gateway, &ifaces)
        .arg("--mode")
        .arg("tc")
        .start()
        .unwrap_or_else(|f| panic!("attach --mode tc failed ({}):\n{}", f.status, f.stderr));
    let dir = inspector.pin_dir().to_path_buf();

    let mut want = Vec::new();
    // One program per hook, the same on every interface: the ingress
    // program, and the egress one, which passes what came in.
    let mut prog = [None, None];
    for i in ifaces {
        assert_eq!(ip_link_xdp(&bed.gateway, i), None, "XDP in TC mode on {i}");
        for (k, (hook, ingress)) in [("tc-ingress", true), ("tc-egress", false)]
            .into_iter()
            .enumerate()
        {
            let ids = tcx_progs(&bed.gateway, i, ingress);
            assert_eq!(ids.len(), 1, "{hook} of {i}: {ids:?}");
            assert_eq!(*prog[k].get_or_insert(ids[0]), ids[0], "one {hook} program");
            assert_eq!(
                bpftool_link_prog(&Pins::link_of(&dir, hook, i)),
                ids[0],
                "pinned {hook} link of {i}"
            );
            want.push((i.to_string(), hook.to_string(), ids[0]));
        }
    }
    assert_ne!(prog[0], prog[1], "the same program on ingress and egress");
    want.sort();
    let st = status_json(&bed.gateway, &dir);
    assert_eq!(hooks_of(&st), want, "status --json: {st}");
    assert_eq!(st["daemon_pid"].as_i64(), Some(inspector.pid() as i64));
    assert_eq!(st["ports"], serde_json::json!([25, 587]));
    assert_eq!(strings(&st["allowed"]), default_allowed_sorted());

    let text = status_text(&bed.gateway, &dir);
    for (i, hook, id) in &want {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["attached:", i, hook, "program", "id", &id.to_string()]),
            "status does not show {hook} on {i}:\n{text}"
        );
    }

    // And it inspects: the TC hooks mask like XDP.
    masked_starttls_session(&bed, &smtpd);
    let st = status_json(&bed.gateway, &dir);
    assert_eq!(st["flows_tracked"].as_u64(), Some(1), "{st}");

    let stopped = inspector.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    for i in ifaces {
        for ingress in [true, false] {
            assert_eq!(tcx_progs(&bed.gateway, i, ingress), Vec::<u64>::new());
        }
    }
}

// ---------------------------------------------------------------------
// 2. The daemon dies mid-session; the next attach takes over
// ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hooks {
    Xdp,
    Tc,
}

/// The programs on the gateway's hooks, one id per hook, in a fixed order
/// (in TC mode each interface's ingress, then its egress).
fn hook_progs(bed: &Testbed, hooks: Hooks) -> Vec<u64> {
    let mut v = Vec::new();
    for i in bed.gateway_ifaces() {
        match hooks {
            Hooks::Xdp => v.push(
                ip_link_xdp(&bed.gateway, i).unwrap_or_else(|| panic!("no XDP program on {i}")),
            ),
            Hooks::Tc => {
                for ingress in [true, false] {
                    let ids = tcx_progs(&bed.gateway, i, ingress);
                    assert_eq!(ids.len(), 1, "TCX of {i} (ingress {ingress}): {ids:?}");
                    v.push(ids[0]);
                }
            }
        }
    }
    v
}

/// The program on `hook` (`xdp`, `tc-ingress` or `tc-egress`) in the ids
/// of [`hook_progs`], after checking they hold one program per hook: the
/// same on every interface, and in TC mode one on ingress, another on
/// egress.
fn program_on(progs: &[u64], hook: &str) -> u64 {
    let tc = hook != "xdp";
    let per_iface = if tc { 2 } else { 1 };
    for (i, p) in progs.iter().enumerate() {
        assert_eq!(*p, progs[i % per_iface], "one program per hook: {progs:?}");
    }
    if tc {
        assert_ne!(
            progs[0], progs[1],
            "one program on both TC hooks: {progs:?}"
        );
    }
    if hook == "tc-egress" {
        progs[1]
    } else {
        progs[0]
    }
}

fn daemon_killed_mid_session(offloads: Offloads, hooks: Hooks) {
    let (bed, smtpd) = new_bed(offloads);
    let ifaces = bed.gateway_ifaces();
    let pins = Pins::new();
    let mode: &[&str] = match hooks {
        Hooks::Xdp => &[],
        Hooks::Tc => &["--mode", "tc"],
    };
    let mut first = Daemon::start(&bed.gateway, &ifaces, pins.path(), mode);
    let progs = hook_progs(&bed, hooks);
    let st = status_json(&bed.gateway, pins.path());
    assert_eq!(st["daemon_pid"].as_i64(), Some(first.pid() as i64));

    let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
    c.expect("EHLO client.test", 250);

    // SIGKILL: no clean-up at all.
    let killed = first.stop(libc::SIGKILL);
    assert_eq!(killed.status.signal(), Some(libc::SIGKILL), "{killed}");
    let ctx = format!("first attach:\n{}", killed.stderr);
    assert_eq!(
        hook_progs(&bed, hooks),
        progs,
        "the programs changed when the daemon died; {ctx}"
    );
    let st = status_json(&bed.gateway, pins.path());
    assert_eq!(st["daemon_pid"], Value::Null, "{st}");
    assert_eq!(hooks_of(&st).len(), progs.len(), "{st}");
    assert!(
        status_text(&bed.gateway, pins.path()).contains("daemon:     not running"),
        "{ctx}"
    );

    // The kernel goes on inspecting the same session without a daemon.
    let before = stats(&bed.gateway, pins.path());
    c.expect("STARTTLS", 500);
    let after = stats(&bed.gateway, pins.path());
    assert_eq!(
        counter(&after, "commands_masked") - counter(&before, "commands_masked"),
        1,
        "stats --json after the kill: {after}"
    );
    assert_eq!(verb_counts(&after, "STARTTLS"), (1, 1), "{after}");
    // Into the message body, still without a daemon.
    c.expect("MAIL FROM:<a@example.com>", 250);
    c.expect("RCPT TO:<b@example.com>", 250);
    c.expect("DATA", 354);

    // The next attach on the same pin dir takes the links over.
    let mut second = Daemon::start(&bed.gateway, &ifaces, pins.path(), mode);
    let log = second.stderr();
    assert!(
        log.contains(&format!("took over {} pinned link(s)", progs.len())),
        "the second attach does not say it took over the links:\n{log}"
    );
    let new_progs = hook_progs(&bed, hooks);
    for (old, new) in progs.iter().zip(&new_progs) {
        assert_ne!(old, new, "the program was not replaced: {new_progs:?}");
    }
    let st = status_json(&bed.gateway, pins.path());
    assert_eq!(st["daemon_pid"].as_i64(), Some(second.pid() as i64), "{st}");
    assert_eq!(hooks_of(&st).len(), new_progs.len(), "{st}");
    assert!(
        hooks_of(&st)
            .iter()
            .all(|h| h.2 == program_on(&new_progs, &h.1)),
        "status shows old program ids: {st}"
    );

    // The same session, still in its message body: these lines pass as
    // they are.
    c.send(b"Subject: takeover\r\n\r\nSTARTTLS\r\nVERB\r\nXEXCH50 x\r\n");
    c.expect(".", 250);
    // Back in the command state: masked again.
    c.expect("VERB", 500);
    c.expect("QUIT", 221);

    assert_eq!(
        server_lines(&smtpd, c.local, "command"),
        [
            "EHLO client.test\\r\\n",
            "XXXXXXXX\\r\\n",
            "MAIL FROM:<a@example.com>\\r\\n",
            "RCPT TO:<b@example.com>\\r\\n",
            "DATA\\r\\n",
            "XXXX\\r\\n",
            "QUIT\\r\\n",
        ],
        "commands at the server"
    );
    let messages = smtpd.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0].body(),
        b"STARTTLS\r\nVERB\r\nXEXCH50 x\r\n",
        "the body was changed: {}",
        show(&messages[0].content)
    );

    let end = stats(&bed.gateway, pins.path());
    assert_eq!(counter(&end, "flows_created"), 1, "{end}");
    assert_eq!(counter(&end, "midstream"), 0, "{end}");
    assert_eq!(counter(&end, "dropped"), 0, "{end}");
    assert_eq!(counter(&end, "bodies"), 1, "{end}");
    assert_eq!(verb_counts(&end, "VERB"), (1, 1), "{end}");
    assert_eq!(counter(&end, "commands_masked"), 2, "{end}");

    // Without --persist, SIGINT now removes everything, the earlier
    // instance's links included.
    let out = second.stop(libc::SIGINT);
    assert!(out.status.success(), "{out}");
    assert!(!pins.path().exists(), "pin dir left after SIGINT: {out}");
    assert_no_xdp(&bed, "after the second attach stopped");
    if hooks == Hooks::Tc {
        for i in ifaces {
            for ingress in [true, false] {
                assert_eq!(tcx_progs(&bed.gateway, i, ingress), Vec::<u64>::new());
            }
        }
    }
}

/// SIGKILL of `attach` in the middle of a session: the XDP program stays,
/// the session is still inspected (a STARTTLS is masked), `stats` counts;
/// the next `attach` takes the pinned links over with a new program and the
/// same session keeps its state (in its message body, `STARTTLS` and `VERB`
/// lines pass; after the final dot, `VERB` is masked); one flow created.
#[test]
fn daemon_killed_mid_session_xdp_default_offloads() {
    daemon_killed_mid_session(Offloads::Default, Hooks::Xdp);
}

#[test]
fn daemon_killed_mid_session_xdp_offloads_off() {
    daemon_killed_mid_session(Offloads::Off, Hooks::Xdp);
}

/// The same with `--mode tc`: TCX links pinned and taken over.
#[test]
fn daemon_killed_mid_session_tc() {
    daemon_killed_mid_session(Offloads::Default, Hooks::Tc);
}

// ---------------------------------------------------------------------
// 3. --persist and detach
// ---------------------------------------------------------------------

/// `attach --persist`: SIGTERM leaves the program attached (still masking)
/// and the pins in place; `status` says the daemon is not running; `detach`
/// refuses while an `attach` runs and changes nothing; `detach --iface`
/// removes one interface's hook only; `detach` removes the rest and the pin
/// dir; a second `detach` succeeds, saying there was nothing to detach.
#[test]
fn persist_then_detach() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let [gc, gs] = ifaces;
    let pins = Pins::new();

    let mut first = Daemon::start(&bed.gateway, &ifaces, pins.path(), &["--persist"]);
    let prog = gateway_xdp(&bed);
    let out = first.stop(libc::SIGTERM);
    assert!(
        out.status.success(),
        "attach --persist after SIGTERM: {out}"
    );
    assert!(
        out.stderr.contains("left the inspector attached"),
        "{}",
        out.stderr
    );
    assert_eq!(gateway_xdp(&bed), prog, "the program changed on SIGTERM");
    assert_pinned(&pins, &ifaces, "after SIGTERM with --persist");
    for i in ifaces {
        assert_eq!(bpftool_link_prog(&pins.link("xdp", i)), prog);
    }
    let st = status_json(&bed.gateway, pins.path());
    assert_eq!(st["daemon_pid"], Value::Null, "{st}");
    assert_eq!(hooks_of(&st).len(), 2, "{st}");
    let text = status_text(&bed.gateway, pins.path());
    assert!(
        text.contains("daemon:     not running"),
        "status after a persisted stop:\n{text}"
    );
    // Still inspecting, with nobody running.
    masked_starttls_session(&bed, &smtpd);

    // detach while an attach runs: refused, nothing changes.
    let mut second = Daemon::start(&bed.gateway, &ifaces, pins.path(), &["--persist"]);
    let prog2 = gateway_xdp(&bed);
    for args in [
        vec!["detach", "--pin-dir", pins.arg()],
        vec!["detach", "--iface", gs, "--pin-dir", pins.arg()],
    ] {
        let out = cli(&bed.gateway, &args);
        assert_failed("detach while attach runs", &out, &["running", pins.arg()]);
        assert_eq!(gateway_xdp(&bed), prog2, "detach changed the program");
        assert_pinned(&pins, &ifaces, "after a refused detach");
    }
    masked_starttls_session(&bed, &smtpd);
    let out = second.stop(libc::SIGTERM);
    assert!(out.status.success(), "{out}");
    assert_eq!(gateway_xdp(&bed), prog2);

    // detach --iface: that interface only.
    let out = cli_ok(
        &bed.gateway,
        &["detach", "--iface", gs, "--pin-dir", pins.arg()],
    );
    assert_eq!(
        out.stdout_str(),
        format!("detached from {gs} (xdp)\n"),
        "{out}"
    );
    assert_eq!(ip_link_xdp(&bed.gateway, gs), None, "{gs} still has XDP");
    assert_eq!(ip_link_xdp(&bed.gateway, gc), Some(prog2), "{gc} lost XDP");
    assert!(!pins.link("xdp", gs).exists());
    assert_pinned(&pins, &[gc], "after detach --iface");
    let st = status_json(&bed.gateway, pins.path());
    assert_eq!(
        hooks_of(&st),
        [(gc.to_string(), "xdp".to_string(), prog2)],
        "{st}"
    );

    // detach: everything.
    let out = cli_ok(&bed.gateway, &["detach", "--pin-dir", pins.arg()]);
    assert!(
        out.stdout_str()
            .contains(&format!("detached from {gc} (xdp)")),
        "{out}"
    );
    assert_no_xdp(&bed, "after detach");
    assert!(!pins.path().exists(), "the pin dir is still there: {out}");
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool");
    let links: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["prog_id"].as_u64() == Some(prog2)),
        "a link to program {prog2} still exists: {links}"
    );

    // detach again: nothing there, which is success (idempotent), said so.
    let out = cli_ok(&bed.gateway, &["detach", "--pin-dir", pins.arg()]);
    assert!(out.stdout_str().contains("nothing to detach"), "{out}");
    assert!(!pins.path().exists());
}

/// `detach --iface` naming an interface the inspector is not on says so,
/// succeeds, and changes nothing. (Stopped with SIGINT: `--persist` keeps
/// everything on either signal.)
#[test]
fn detach_unknown_interface_changes_nothing() {
    let (bed, _smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let pins = Pins::new();
    let mut d = Daemon::start(&bed.gateway, &[ifaces[0]], pins.path(), &["--persist"]);
    let prog = ip_link_xdp(&bed.gateway, ifaces[0]).expect("attached");
    let out = d.stop(libc::SIGINT);
    assert!(out.status.success(), "{out}");
    assert_eq!(ip_link_xdp(&bed.gateway, ifaces[0]), Some(prog));
    assert_pinned(&pins, &[ifaces[0]], "after SIGINT with --persist");
    let out = cli(
        &bed.gateway,
        &["detach", "--iface", ifaces[1], "--pin-dir", pins.arg()],
    );
    // Idempotent: nothing to do on that interface is success, said so.
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout_str()
            .contains(&format!("nothing to detach on `{}`", ifaces[1])),
        "{out}"
    );
    assert_eq!(ip_link_xdp(&bed.gateway, ifaces[0]), Some(prog));
    assert_pinned(&pins, &[ifaces[0]], "after a refused detach --iface");
    cli_ok(&bed.gateway, &["detach", "--pin-dir", pins.arg()]);
    assert_no_xdp(&bed, "after detach");
}

/// After a crash (SIGKILL, no clean-up at all), `detach` removes the
/// programs and the pins.
#[test]
fn detach_after_a_crash() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let pins = Pins::new();
    let mut d = Daemon::start(&bed.gateway, &ifaces, pins.path(), &[]);
    let prog = gateway_xdp(&bed);
    let out = d.stop(libc::SIGKILL);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out}");
    assert_eq!(gateway_xdp(&bed), prog);
    assert_pinned(&pins, &ifaces, "after SIGKILL");
    masked_starttls_session(&bed, &smtpd);

    let out = cli_ok(&bed.gateway, &["detach", "--pin-dir", pins.arg()]);
    for i in ifaces {
        assert!(
            out.stdout_str()
                .contains(&format!("detached from {i} (xdp)")),
            "{out}"
        );
    }
    assert_no_xdp(&bed, "after detach");
    assert!(!pins.path().exists(), "pin dir left: {out}");
    // Not inspected any more: STARTTLS reaches the server as sent.
    let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 454);
    c.expect("QUIT", 221);
    assert_eq!(
        server_lines(&smtpd, c.local, "command")[1],
        "STARTTLS\\r\\n"
    );
}

/// Links left in XDP mode cannot be taken over by `attach --mode tc` (nor
/// the reverse): one line saying to detach first, and nothing changes.
#[test]
fn takeover_in_another_mode_is_refused() {
    let (bed, _smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let pins = Pins::new();
    let mut d = Daemon::start(&bed.gateway, &ifaces, pins.path(), &["--persist"]);
    let prog = gateway_xdp(&bed);
    assert!(d.stop(libc::SIGTERM).status.success());
    let out = Daemon::try_start(&bed.gateway, &ifaces, pins.path(), &["--mode", "tc"])
        .err()
        .expect("attach --mode tc over XDP links succeeded");
    assert_one_line_error(
        "tc over xdp",
        out.status.code(),
        &out.stderr,
        &["detach", pins.arg()],
    );
    assert_eq!(gateway_xdp(&bed), prog);
    assert_pinned(&pins, &ifaces, "after a refused takeover");
    for i in ifaces {
        for ingress in [true, false] {
            assert_eq!(tcx_progs(&bed.gateway, i, ingress), Vec::<u64>::new());
        }
    }
}

/// `--mode tc --persist`: the TCX hooks stay after SIGTERM; `detach --iface`
/// removes both hooks of that interface only; `detach` the rest.
#[test]
fn persist_and_detach_in_tc_mode() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let [gc, gs] = ifaces;
    let pins = Pins::new();
    let mut d = Daemon::start(
        &bed.gateway,
        &ifaces,
        pins.path(),
        &["--mode", "tc", "--persist"],
    );
    let progs = hook_progs(&bed, Hooks::Tc);
    assert!(d.stop(libc::SIGTERM).status.success());
    assert_eq!(hook_progs(&bed, Hooks::Tc), progs);
    let (ingress, egress) = (
        program_on(&progs, "tc-ingress"),
        program_on(&progs, "tc-egress"),
    );
    for i in ifaces {
        for hook in ["tc-ingress", "tc-egress"] {
            assert_eq!(
                bpftool_link_prog(&pins.link(hook, i)),
                program_on(&progs, hook)
            );
        }
    }
    masked_starttls_session(&bed, &smtpd);

    let out = cli_ok(
        &bed.gateway,
        &["detach", "--iface", gs, "--pin-dir", pins.arg()],
    );
    let mut lines: Vec<String> = out.stdout_str().lines().map(String::from).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("detached from {gs} (tc-egress)"),
            format!("detached from {gs} (tc-ingress)")
        ],
        "{out}"
    );
    for (on_ingress, prog) in [(true, ingress), (false, egress)] {
        assert_eq!(tcx_progs(&bed.gateway, gs, on_ingress), Vec::<u64>::new());
        assert_eq!(tcx_progs(&bed.gateway, gc, on_ingress), vec![prog]);
    }
    let st = status_json(&bed.gateway, pins.path());
    assert_eq!(
        hooks_of(&st),
        [
            (gc.to_string(), "tc-egress".to_string(), egress),
            (gc.to_string(), "tc-ingress".to_string(), ingress)
        ],
        "{st}"
    );
    cli_ok(&bed.gateway, &["detach", "--pin-dir", pins.arg()]);
    for ingress in [true, false] {
        assert_eq!(tcx_progs(&bed.gateway, gc, ingress), Vec::<u64>::new());
    }
    assert!(!pins.path().exists());
}

// ---------------------------------------------------------------------
// 4. stats
// ---------------------------------------------------------------------

/// Every name `stats` must show: the counters and the flow-table figures.
fn every_stat_name() -> Vec<&'static str> {
    let mut v: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
    v.extend(["flows_tracked", "flows_active"]);
    v
}

/// The tables `stats --watch` printed so far into a pipe (each after a
/// title line; a screen clear only on a terminal).
fn watch_tables(out: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(out);
    assert!(
        !text.contains('\x1b'),
        "escapes in piped --watch output:\n{text}"
    );
    text.split("inspector stats at ")
        .skip(1)
        .map(String::from)
        .collect()
}

/// `(total, per second)` of a counter in one `--watch` table.
fn watch_row(table: &str, name: &str) -> Option<(u64, f64)> {
    table.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() != 3 || w[0] != name {
            return None;
        }
        Some((w[1].parse().ok()?, w[2].parse().ok()?))
    })
}

/// `stats --watch 0.2` from a second process: refreshed tables with a per
/// second column, showing traffic as it happens; SIGINT stops it.
/// `stats --json` and the plain table name every counter.
#[test]
fn stats_watch_json_and_table() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let inspector = Inspector::attach(&bed.gateway, &bed.gateway_ifaces());
    let dir = inspector.pin_dir().to_path_buf();

    let mut c = bed.gateway.nsenter(inspector_bin());
    c.args(["stats", "--watch", "0.2", "--pin-dir", pin_arg(&dir)]);
    let mut watch = Proc::spawn(&mut c);
    let tables_now = |n: usize| {
        wait_until(&format!("{n} stats --watch tables"), STEP_TIMEOUT, || {
            // Every table but the last is complete.
            let t = watch_tables(&watch.stdout());
            (t.len() > n).then(|| t[..n].to_vec())
        })
    };
    let first = tables_now(2);
    for t in &first {
        let header: Vec<&str> = t
            .lines()
            .find(|l| l.starts_with("counter"))
            .unwrap_or_else(|| panic!("no header in a table:\n{t}"))
            .split_whitespace()
            .collect();
        assert_eq!(header, ["counter", "total", "per", "second"], "{t}");
        for name in every_stat_name() {
            assert!(
                t.lines().any(|l| l.split_whitespace().next() == Some(name)),
                "{name} missing from a --watch table:\n{t}"
            );
        }
        assert_eq!(
            watch_row(t, "commands_masked"),
            Some((0, 0.0)),
            "no traffic yet:\n{t}"
        );
    }

    // Traffic now: a later table shows it, with a rate.
    masked_starttls_session(&bed, &smtpd);
    let seen = wait_until("a --watch table showing the session", STEP_TIMEOUT, || {
        let t = watch_tables(&watch.stdout());
        let complete = &t[..t.len().saturating_sub(1)];
        complete.iter().find_map(|t| {
            let (total, rate) = watch_row(t, "commands_masked")?;
            (total == 1 && rate > 0.0).then(|| t.clone())
        })
    });
    let (seen_total, seen_rate) = watch_row(&seen, "commands_seen").unwrap();
    assert!(seen_total >= 3 && seen_rate > 0.0, "{seen}");
    // ...and once traffic stops, the rate goes back to 0 with the total kept.
    wait_until(
        "a --watch table with a zero rate again",
        STEP_TIMEOUT,
        || {
            let t = watch_tables(&watch.stdout());
            let last_complete = t.len().checked_sub(2).map(|i| t[i].clone())?;
            (watch_row(&last_complete, "commands_masked") == Some((1, 0.0))).then_some(())
        },
    );

    watch.signal(libc::SIGINT);
    let out = watch.finish(STEP_TIMEOUT);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGINT),
        "stats --watch after SIGINT: {out}"
    );
    assert!(out.stderr.trim().is_empty(), "{out}");

    // Bad intervals, and nothing attached: one line, exit 1.
    for secs in ["0", "0.01", "-1", "nan", "inf"] {
        let arg = format!("--watch={secs}");
        let out = cli(&bed.gateway, &["stats", &arg, "--pin-dir", pin_arg(&dir)]);
        assert_refused(&format!("stats --watch {secs}"), &out, &["--watch"]);
    }
    let nothing = unique_pin_dir();
    let out = cli(
        &bed.gateway,
        &["stats", "--watch", "0.2", "--pin-dir", pin_arg(&nothing)],
    );
    assert_failed(
        "stats --watch, nothing attached",
        &out,
        &[pin_arg(&nothing)],
    );

    // stats --json: every counter, numbers, and the verb table.
    let json = stats(&bed.gateway, &dir);
    for name in every_stat_name().into_iter().chain(["flows_evicted"]) {
        assert!(json[name].as_u64().is_some(), "{name} missing: {json}");
    }
    assert_eq!(verb_counts(&json, "STARTTLS"), (1, 1), "{json}");
    assert_eq!(verb_counts(&json, "EHLO"), (1, 0), "{json}");
    // The plain table: every counter with the same value.
    let table = cli_ok(&bed.gateway, &["stats", "--pin-dir", pin_arg(&dir)]).stdout_str();
    for name in every_stat_name().into_iter().chain(["flows_evicted"]) {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from the table:\n{table}"));
        let v: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(v, json[name].as_u64().unwrap(), "{name}: {table}\n{json}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["STARTTLS", "1", "1"]),
        "{table}"
    );
}

// ---------------------------------------------------------------------
// 5. --metrics
// ---------------------------------------------------------------------

/// A TCP port nobody listens on in the namespace.
fn free_port(ns: &NetNs) -> u16 {
    in_netns(ns, || {
        TcpListener::bind("127.0.0.1:0")
            .expect("binding a port")
            .local_addr()
            .unwrap()
            .port()
    })
}

/// `curl -i URL` inside `ns`: the status code and the body.
fn curl(ns: &NetNs, url: &str) -> (u16, String) {
    let mut c = ns.nsenter("curl");
    c.args(["-sS", "-i", "--max-time", "10", url]);
    let out = run(&mut c);
    out.assert_success();
    let text = out.stdout_str();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header from {url}: {out}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {url}: {out}"));
    (code, body.to_string())
}

fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

/// `--metrics 127.0.0.1:PORT`: GET /metrics serves every counter and the
/// per-verb commands; one masked STARTTLS shows as masked 1; another path
/// is 404.
#[test]
fn metrics_endpoint() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let port = free_port(&bed.gateway);
    let addr = format!("127.0.0.1:{port}");
    let inspector = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .arg("--metrics")
        .arg(&addr)
        .start()
        .unwrap_or_else(|f| panic!("attach --metrics failed ({}):\n{}", f.status, f.stderr));
    assert!(
        inspector
            .stderr()
            .contains(&format!("serving metrics on http://{addr}/metrics")),
        "{}",
        inspector.stderr()
    );
    let url = format!("http://{addr}/metrics");

    let (code, body) = curl(&bed.gateway, &url);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        metric(&body, "inspector_masked_commands_total"),
        Some(0),
        "{body}"
    );

    masked_starttls_session(&bed, &smtpd);
    smtpd.wait_closed(1, STEP_TIMEOUT);
    let json = stats(&bed.gateway, inspector.pin_dir());
    let (code, body) = curl(&bed.gateway, &url);
    assert_eq!(code, 200, "{body}");
    for c in Counter::ALL {
        let name = inspector_userspace::metrics::metric_name(c.name());
        let v = metric(&body, &name).unwrap_or_else(|| panic!("no {name} in:\n{body}"));
        assert!(
            body.contains(&format!("# TYPE {name} counter\n")),
            "no TYPE line for {name}:\n{body}"
        );
        if c.name() != "packets_seen" && c.name() != "packets_inspected" {
            // (frames may still cross, e.g. IPv6 neighbour discovery)
            assert_eq!(v, counter(&json, c.name()), "{name}:\n{body}\n{json}");
        }
    }
    assert!(
        metric(&body, "inspector_inspected_packets_total").unwrap()
            >= counter(&json, "packets_inspected")
    );
    assert!(metric(&body, "inspector_inspected_packets_total").unwrap() > 0);
    assert!(
        body.lines()
            .any(|l| l == "inspector_commands_total{verb=\"STARTTLS\",action=\"masked\"} 1"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == "inspector_commands_total{verb=\"STARTTLS\",action=\"passed\"} 0"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == "inspector_commands_total{verb=\"EHLO\",action=\"masked\"} 0"),
        "{body}"
    );
    assert_eq!(metric(&body, "inspector_tracked_flows"), Some(1), "{body}");
    assert!(metric(&body, "inspector_active_flows").is_some(), "{body}");

    let (code, _) = curl(&bed.gateway, &format!("http://{addr}/nosuch"));
    assert_eq!(code, 404);
    let (code, _) = curl(&bed.gateway, &format!("http://{addr}/metricsx"));
    assert_eq!(code, 404);
}

/// `--metrics` on a port that is taken: one line, exit 1, nothing stays
/// attached or pinned.
#[test]
fn metrics_port_in_use_fails_cleanly() {
    let (bed, _smtpd) = new_bed(Offloads::Default);
    let holder = in_netns(&bed.gateway, || {
        TcpListener::bind("127.0.0.1:0").expect("binding a port")
    });
    let addr = holder.local_addr().unwrap().to_string();
    let pins = Pins::new();
    let r = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .pin_dir(pins.path())
        .arg("--metrics")
        .arg(&addr)
        .start();
    assert_attach_failed("metrics port in use", r, &[&addr]);
    assert_no_xdp(&bed, "metrics port in use");
    assert!(!pins.path().exists(), "pin dir left behind");
    drop(holder);
}

/// A takeover that fails (here: the metrics port is taken) leaves the
/// persisted instance as it was: same program on the links, same policy
/// (the failed attach asked for `--allow STARTTLS`), still masking.
#[test]
fn failed_takeover_changes_nothing() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let pins = Pins::new();
    let mut d = Daemon::start(&bed.gateway, &ifaces, pins.path(), &["--persist"]);
    let prog = gateway_xdp(&bed);
    assert!(d.stop(libc::SIGTERM).status.success());
    let policy = policy_show(&bed.gateway, pins.path());
    let status = status_json(&bed.gateway, pins.path());

    let holder = in_netns(&bed.gateway, || {
        TcpListener::bind("127.0.0.1:0").expect("binding a port")
    });
    let addr = holder.local_addr().unwrap().to_string();
    let out = Daemon::try_start(
        &bed.gateway,
        &ifaces,
        pins.path(),
        &["--allow", "STARTTLS", "--port", "2525", "--metrics", &addr],
    )
    .err()
    .expect("attach with a taken metrics port succeeded");
    // (Log lines may come first; the error is one line, the last.)
    assert_eq!(out.status.code(), Some(1), "{out}");
    let last = out.stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("inspector: error: ") && last.contains(&addr),
        "{out}"
    );
    assert_pinned(&pins, &ifaces, "after a failed takeover");
    assert_eq!(
        policy_show(&bed.gateway, pins.path()),
        policy,
        "the policy changed"
    );
    let after = status_json(&bed.gateway, pins.path());
    assert_eq!(
        after["ports"], status["ports"],
        "the ports changed: {after}"
    );
    assert_eq!(gateway_xdp(&bed), prog, "the program on the links changed");
    masked_starttls_session(&bed, &smtpd);
}

// ---------------------------------------------------------------------
// 6. --policy FILE
// ---------------------------------------------------------------------

fn policy_dir() -> tempfile::TempDir {
    inspector_tests::temp_dir("policy")
}

/// `--policy FILE` with allow STARTTLS, deny VRFY, ports [25]: at the
/// server, STARTTLS arrives as sent and VRFY masked; port 587 is no longer
/// inspected; `policy show` and `status` show the result.
#[test]
fn policy_file_applies() {
    let bed = Testbed::new(Offloads::Default);
    let smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);
    let smtpd587 = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 587);
    let tmp = policy_dir();
    let file = tmp.path().join("policy.toml");
    std::fs::write(
        &file,
        "# as deployed\nallow = [\"STARTTLS\"]\ndeny = [\"VRFY\"]\nports = [25]\n",
    )
    .unwrap();
    let inspector = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .arg("--policy")
        .arg(&file)
        .start()
        .unwrap_or_else(|f| panic!("attach --policy failed ({}):\n{}", f.status, f.stderr));
    let dir = inspector.pin_dir().to_path_buf();

    let mut want: Vec<String> = default_allowed_sorted()
        .into_iter()
        .filter(|v| v != "VRFY")
        .chain(["STARTTLS".to_string()])
        .collect();
    want.sort();
    let (text, json) = policy_show(&bed.gateway, &dir);
    assert_eq!(
        json,
        serde_json::json!({
            "allowed": want,
            "ehlo_filter": true,
            "mask_banner": false,
            "limits": {
                "command_line": "drop-connection",
                "rcpts": "drop-connection",
                "address_length": "drop-connection",
                "address_chars": "drop-connection",
                "header_line": "drop-connection",
            },
        }),
        "{text}"
    );
    assert!(
        text.starts_with(&format!("allowed: {}\n", want.join(" "))),
        "{text}"
    );
    let st = status_json(&bed.gateway, &dir);
    assert_eq!(st["ports"], serde_json::json!([25]), "{st}");
    assert_eq!(strings(&st["allowed"]), want, "{st}");

    let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
    c.expect("EHLO client.test", 250);
    let r = c.cmd("STARTTLS");
    // aiosmtpd has no certificate: it refuses, and the session goes on in
    // the clear (still inspected).
    assert_eq!(code_of(&r), 454, "{r}");
    c.expect("VRFY bob", 500);
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
    assert_eq!(
        server_lines(&smtpd, c.local, "command"),
        [
            "EHLO client.test\\r\\n",
            "STARTTLS\\r\\n",
            "XXXX bob\\r\\n",
            "NOOP\\r\\n",
            "QUIT\\r\\n"
        ]
    );

    // Port 587 is not in the file: not inspected.
    let mut c = Smtp::connect(&bed.client, SERVER_V4, 587);
    c.expect("EHLO client.test", 250);
    c.expect("VERB", 500);
    c.expect("VRFY bob", 252);
    c.expect("QUIT", 221);
    assert_eq!(
        server_lines(&smtpd587, c.local, "command"),
        [
            "EHLO client.test\\r\\n",
            "VERB\\r\\n",
            "VRFY bob\\r\\n",
            "QUIT\\r\\n"
        ]
    );
    let s = stats(&bed.gateway, &dir);
    assert_eq!(counter(&s, "flows_created"), 1, "{s}");
    assert_eq!(verb_counts(&s, "STARTTLS"), (1, 0), "{s}");
    assert_eq!(verb_counts(&s, "VRFY"), (1, 1), "{s}");
}

/// Bad policy files: each one line naming the file, exit 1, nothing
/// attached or pinned.
#[test]
fn bad_policy_files_fail_cleanly() {
    let bed = Testbed::new(Offloads::Default);
    let tmp = policy_dir();
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown-key", "colour = \"blue\"\n", &["colour"]),
        (
            "unknown-key-late",
            "allow = [\"STARTTLS\"]\nmax_flow = 10\n",
            &["max_flow"],
        ),
        ("bad-verb", "allow = [\"NOT A VERB\"]\n", &["NOT A VERB"]),
        ("long-verb", "deny = [\"TOOLONGVERB\"]\n", &["TOOLONGVERB"]),
        ("bad-midstream", "midstream = \"maybe\"\n", &["maybe"]),
        ("bad-port", "ports = [70000]\n", &["70000"]),
        ("bad-type", "monitor = \"yes\"\n", &["monitor"]),
        ("zero-flows", "max_flows = 0\n", &["max_flows"]),
        ("syntax", "ports = [25,\n", &[]),
    ];
    for (name, text, mentions) in cases {
        let file = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        let pins = Pins::new();
        let r = Attach::new(&bed.gateway, &bed.gateway_ifaces())
            .pin_dir(pins.path())
            .arg("--policy")
            .arg(&file)
            .start();
        let mut m = vec![path];
        m.extend(mentions.iter());
        assert_attach_refused(&format!("policy file {name}"), r, &m);
        assert_no_xdp(&bed, name);
        assert!(!pins.path().exists(), "{name}: pin dir created");
    }
    // Unreadable: missing, and a folder.
    let missing = tmp.path().join("missing.toml");
    for (name, file) in [("missing", missing.as_path()), ("folder", tmp.path())] {
        let pins = Pins::new();
        let r = Attach::new(&bed.gateway, &bed.gateway_ifaces())
            .pin_dir(pins.path())
            .arg("--policy")
            .arg(file)
            .start();
        assert_attach_failed(&format!("policy file {name}"), r, &[file.to_str().unwrap()]);
        assert_no_xdp(&bed, name);
        assert!(!pins.path().exists(), "{name}: pin dir created");
    }
}

/// Port 465 in a policy file is refused like `--port 465`, and the error
/// names the file it came from (README: "a bad value is refused with a
/// one-line error naming the file").
#[test]
fn policy_file_with_port_465_names_the_file() {
    let bed = Testbed::new(Offloads::Default);
    let tmp = policy_dir();
    let file = tmp.path().join("smtps.toml");
    std::fs::write(&file, "ports = [25, 465]\n").unwrap();
    let pins = Pins::new();
    let r = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .pin_dir(pins.path())
        .arg("--policy")
        .arg(&file)
        .start();
    assert_attach_refused("ports = [465]", r, &["465", file.to_str().unwrap()]);
    assert_no_xdp(&bed, "ports = [465]");
    assert!(!pins.path().exists());
}

// ---------------------------------------------------------------------
// 7. policy: bad input
// ---------------------------------------------------------------------

/// `policy allow "NOT A VERB"`, `policy deny ''` and friends: one line,
/// exit 1, and the live policy is unchanged (and still enforced).
#[test]
fn policy_command_rejects_bad_verbs() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let inspector = Inspector::attach(&bed.gateway, &bed.gateway_ifaces());
    let dir = inspector.pin_dir().to_path_buf();
    let before = policy_show(&bed.gateway, &dir);
    assert_eq!(
        strings(&before.1["allowed"]),
        default_allowed_sorted(),
        "{}",
        before.0
    );

    let bad: &[&[&str]] = &[
        &["allow", "NOT A VERB"],
        &["deny", ""],
        &["allow", ""],
        &["allow", "TOOLONGVERB"],
        &["allow", "VERB:"],
        // One bad verb among good ones changes nothing either.
        &["allow", "STARTTLS", "BAD VERB"],
        &["deny", "VRFY", "X\u{e9}"],
    ];
    for args in bad {
        let mut a = vec!["policy"];
        a.extend(args.iter());
        a.extend(["--pin-dir", pin_arg(&dir)]);
        let out = cli(&bed.gateway, &a);
        let what = format!("policy {args:?}");
        assert_refused(&what, &out, &["not a verb"]);
        assert_eq!(
            policy_show(&bed.gateway, &dir),
            before,
            "{what} changed the policy"
        );
    }
    // Still the default policy in the kernel: STARTTLS masked, VRFY passes.
    let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 500);
    c.expect("VRFY bob", 252);
    c.expect("QUIT", 221);
    assert_eq!(
        server_lines(&smtpd, c.local, "command"),
        [
            "EHLO client.test\\r\\n",
            "XXXXXXXX\\r\\n",
            "VRFY bob\\r\\n",
            "QUIT\\r\\n"
        ]
    );

    // A good change works (the same commands are not simply broken).
    let out = cli_ok(
        &bed.gateway,
        &["policy", "allow", "starttls", "--pin-dir", pin_arg(&dir)],
    );
    assert!(out.stdout_str().contains("STARTTLS"), "{out}");
    assert!(strings(&policy_show(&bed.gateway, &dir).1["allowed"]).contains(&"STARTTLS".into()));
}

/// `policy show` (and allow, deny) with nothing attached: one line, exit 1.
#[test]
fn policy_without_attach_fails_cleanly() {
    let ns = NetNs::new("policy");
    let dir = unique_pin_dir();
    for args in [
        vec!["policy", "show"],
        vec!["policy", "show", "--json"],
        vec!["policy", "allow", "STARTTLS"],
        vec!["status"],
        vec!["status", "--json"],
    ] {
        let mut a = args.clone();
        a.extend(["--pin-dir", pin_arg(&dir)]);
        let out = cli(&ns, &a);
        assert_failed(
            &format!("{args:?} with nothing attached"),
            &out,
            &[pin_arg(&dir)],
        );
        assert!(!dir.exists(), "{args:?} created the pin dir");
    }
}

// ---------------------------------------------------------------------
// 8. --max-flows
// ---------------------------------------------------------------------

/// The client ports of the flows to port 25 in the pinned flow table, read
/// straight from the kernel with `bpftool map dump` (not through the
/// inspector): the key is the client address (16 bytes), the server
/// address (16), then the client and server ports in host byte order.
fn tracked_client_ports(dir: &Path) -> Vec<u16> {
    let mut c = Command::new("bpftool");
    c.args(["-j", "map", "dump", "pinned"])
        .arg(dir.join(inspector_common::flow::FLOWS_MAP));
    let out = run(&mut c);
    out.assert_success();
    let v = json_of(&out);
    let entries = v
        .as_array()
        .unwrap_or_else(|| panic!("bpftool map dump: not a list: {v}"));
    entries
        .iter()
        .filter_map(|e| {
            let key: Vec<u8> = e["key"]
                .as_array()
                .unwrap_or_else(|| panic!("bpftool map dump: no raw key in {e}"))
                .iter()
                .map(|b| {
                    let b = b.as_str().expect("a key byte as a hex string");
                    u8::from_str_radix(b.trim_start_matches("0x"), 16).expect("a hex byte")
                })
                .collect();
            assert_eq!(key.len(), 36, "a flow key is 36 bytes: {e}");
            let client_port = u16::from_ne_bytes([key[32], key[33]]);
            let server_port = u16::from_ne_bytes([key[34], key[35]]);
            (server_port == 25).then_some(client_port)
        })
        .collect()
}

/// `--max-flows 16` and 24 sessions opened one after the other, all kept
/// open: the first 16 get an entry and stay inspected; the table is full,
/// so the other 8 are refused (flows_refused, their handshake's last ACK
/// becomes a RST to the server: no greeting), and nothing is evicted
/// (docs/contract.md §6). Once sessions close and expire, new ones are
/// admitted and inspected from their handshake.
#[test]
fn max_flows_refuses_new_flows_and_keeps_the_old_ones() {
    const ADMITTED: usize = 16;
    const REFUSED: usize = 8;
    let (bed, smtpd) = new_bed(Offloads::Default);
    let inspector = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .arg("--max-flows")
        .arg("16")
        .start()
        .unwrap_or_else(|f| panic!("attach --max-flows failed ({}):\n{}", f.status, f.stderr));
    let dir = inspector.pin_dir().to_path_buf();

    let mut conns: Vec<Smtp> = (0..ADMITTED)
        .map(|_| {
            let mut c = Smtp::connect(&bed.client, SERVER_V4, 25);
            c.expect("EHLO client.test", 250);
            c
        })
        .collect();
    let to = SocketAddr::new(SERVER_V4, 25);
    let refused = in_netns(&bed.client, move || {
        (0..REFUSED)
            .filter(|_| Smtp::try_connect(to, Duration::from_secs(2)).is_err())
            .count()
    });
    assert_eq!(
        refused, REFUSED,
        "sessions past a full table got a greeting"
    );
    let s = stats(&bed.gateway, &dir);
    assert_eq!(counter(&s, "flows_created"), ADMITTED as u64, "{s}");
    assert_eq!(counter(&s, "flows_refused"), REFUSED as u64, "{s}");
    assert_eq!(counter(&s, "flows_tracked"), ADMITTED as u64, "{s}");
    assert_eq!(counter(&s, "flows_evicted"), 0, "{s}");
    // The kernel's own table, read without the inspector: exactly the
    // admitted sessions.
    let mut tracked = tracked_client_ports(&dir);
    tracked.sort_unstable();
    let mut admitted: Vec<u16> = conns.iter().map(|c| c.local.port()).collect();
    admitted.sort_unstable();
    assert_eq!(tracked, admitted, "flows in the kernel's table");
    let st = status_json(&bed.gateway, &dir);
    assert_eq!(st["flows_tracked"].as_u64(), Some(ADMITTED as u64), "{st}");

    // Every admitted session still works, and is still inspected.
    for c in &mut conns {
        c.expect("NOOP", 250);
    }
    let first = conns.first_mut().unwrap();
    first.expect("STARTTLS", 500);
    let local = first.local;
    assert_eq!(
        server_lines(&smtpd, local, "command")
            .last()
            .map(String::as_str),
        Some("XXXXXXXX\\r\\n")
    );
    let s2 = stats(&bed.gateway, &dir);
    assert_eq!(counter(&s2, "midstream"), 0, "{s2}");
    for c in &mut conns {
        c.expect("QUIT", 221);
    }
    drop(conns);
}

/// `--max-flows 0` is refused as `max_flows = 0` in a policy file is: one
/// line saying what is wrong with the option, nothing attached or pinned.
#[test]
fn max_flows_zero_is_refused_clearly() {
    let bed = Testbed::new(Offloads::Default);
    let pins = Pins::new();
    let r = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .pin_dir(pins.path())
        .arg("--max-flows")
        .arg("0")
        .start();
    assert_attach_refused("--max-flows 0", r, &["--max-flows", "at least 1"]);
    assert_no_xdp(&bed, "--max-flows 0");
    assert!(!pins.path().exists(), "pin dir left behind");
}

/// A pin dir left by `--persist --max-flows 16`: `attach --max-flows 32`
/// (or the default size) is refused with one line saying to detach first,
/// and the persisted inspector is untouched; the same size takes over.
#[test]
fn max_flows_change_on_persisted_pin_dir_is_refused() {
    let (bed, smtpd) = new_bed(Offloads::Default);
    let ifaces = bed.gateway_ifaces();
    let pins = Pins::new();
    let mut d = Daemon::start(
        &bed.gateway,
        &ifaces,
        pins.path(),
        &["--persist", "--max-flows", "16"],
    );
    let prog = gateway_xdp(&bed);
    assert!(d.stop(libc::SIGTERM).status.success());
    assert_pinned(&pins, &ifaces, "after --persist");

    for args in [&["--max-flows", "32"][..], &[]] {
        let out = Daemon::try_start(&bed.gateway, &ifaces, pins.path(), args)
            .err()
            .unwrap_or_else(|| panic!("attach {args:?} on a 16-flow pin dir succeeded"));
        assert_one_line_error(
            &format!("attach {args:?}"),
            out.status.code(),
            &out.stderr,
            &["detach", pins.arg(), "16"],
        );
        assert_eq!(
            gateway_xdp(&bed),
            prog,
            "the refused attach changed the program"
        );
        assert_pinned(&pins, &ifaces, "after a refused attach");
        let st = status_json(&bed.gateway, pins.path());
        assert_eq!(st["daemon_pid"], Value::Null, "{st}");
    }
    masked_starttls_session(&bed, &smtpd);

    let d2 = Daemon::start(&bed.gateway, &ifaces, pins.path(), &["--max-flows", "16"]);
    assert!(
        d2.stderr().contains("took over 2 pinned link(s)"),
        "{}",
        d2.stderr()
    );
    assert_ne!(gateway_xdp(&bed), prog);
    drop(d2);
    // d2 ran without --persist: SIGTERM removed everything.
    wait_until("the pin dir to go", STEP_TIMEOUT, || {
        (!pins.path().exists()).then_some(())
    });
    assert_no_xdp(&bed, "after the takeover stopped");
}
