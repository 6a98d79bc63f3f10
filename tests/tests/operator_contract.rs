//! The operator's contract (README "Exit status", "Pin dirs", "Restarts
//! and upgrades", "The journal", "Prometheus"), tried as an operator
//! would: refused input exits 2 with one line, `detach` can be repeated,
//! output into a closed pipe ends quietly, `--watch` into a file or a pipe
//! writes plain lines, pin dirs the operator made are left as they were,
//! a second inspector on an interface is refused, a live policy change is
//! said to be lost or kept, masks are in the log, and `/metrics` parses
//! with a real Prometheus parser.
//!
//! Needs root; run with `--test-threads=1`.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use inspector_tests::{
    assert_one_line_refusal,
    client::{self, Script},
    inspector::{unique_pin_dir, Attach, Events},
    inspector_bin,
    netns::{addr::SERVER_V4, in_netns, Veths},
    proc::{run, Finished},
    wait_until, Inspector, NetNs, Offloads, RecordingSmtpd, Testbed,
};
use serde_json::Value;

/// Bound for one step (a reply, counters settling, a process ending).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// An interface name no namespace has: a refusal that fails to happen
/// cannot attach anywhere.
const NO_IFACE: &str = "inspt-none0";

fn inspector_in(ns: &NetNs, args: &[&str]) -> Finished {
    let mut c = ns.nsenter(inspector_bin());
    c.args(args).env("RUST_LOG", "info");
    run(&mut c)
}

fn write_policy(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Runs `attach --persist` on `ifaces` with `dir`, waits for it to be
/// ready, stops it with SIGTERM and waits for it to exit with status 0:
/// the kernel side stays, pinned in `dir`. Returns what it logged.
fn persisted(ns: &NetNs, ifaces: &[&str], dir: &Path, args: &[&str]) -> String {
    let mut a = Attach::new(ns, ifaces).pin_dir(dir).arg("--persist");
    for x in args {
        a = a.arg(x);
    }
    let mut i = a
        .start()
        .unwrap_or_else(|f| panic!("attach --persist: {}", f.stderr));
    // The kernel side stays pinned in `dir`; the caller detaches it.
    let stopped = i.stop_leaving_pin_dir(rustix::process::Signal::TERM.as_raw());
    let log = stopped.stderr;
    assert!(
        stopped.status.success(),
        "attach --persist, SIGTERM: {:?}\n{log}",
        stopped.status
    );
    assert!(log.contains("left the inspector attached"), "{log}");
    log
}

// ---------------------------------------------------------------------
// Exit status and refused input
// ---------------------------------------------------------------------

/// Every value the README says is refused: exit 2 (as for a bad command
/// line), one line naming what to change, nothing attached.
#[test]
fn refused_values_exit_2_with_one_line() {
    let ns = NetNs::new("refuse");
    let tmp = inspector_tests::temp_dir("opc");
    let empty_ports = write_policy(tmp.path(), "empty-ports.toml", "ports = []\n");
    let both_lists = write_policy(
        tmp.path(),
        "both.toml",
        "allow = [\"XFOO\"]\nallowed = [\"EHLO\", \"MAIL\"]\n",
    );
    let same_verb = write_policy(
        tmp.path(),
        "same.toml",
        "allow = [\"VRFY\"]\ndeny = [\"vrfy\"]\n",
    );
    let pins = unique_pin_dir();
    let pin = pins.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["attach", "-i", NO_IFACE, "--port", "0"],
            vec!["--port", "port 0"],
        ),
        (vec!["attach", "-i", NO_IFACE, "--port", "465"], vec!["465"]),
        (
            vec!["attach", "-i", NO_IFACE, "--max-flows", "0"],
            vec!["--max-flows"],
        ),
        (
            vec![
                "attach", "-i", NO_IFACE, "--allow", "XFOO", "--deny", "xfoo",
            ],
            vec!["--allow XFOO", "--deny xfoo"],
        ),
        (
            vec!["attach", "-i", NO_IFACE, "--allow", "NOT A VERB"],
            vec!["not a verb"],
        ),
        (
            vec!["attach", "-i", NO_IFACE, "-i", NO_IFACE],
            vec!["named twice"],
        ),
        (
            vec!["attach", "-i", NO_IFACE, "--policy", &empty_ports],
            vec![&empty_ports, "empty"],
        ),
        (
            vec!["attach", "-i", NO_IFACE, "--policy", &both_lists],
            vec![&both_lists, "allowed", "allow"],
        ),
        (
            vec!["attach", "-i", NO_IFACE, "--policy", &same_verb],
            vec![&same_verb, "VRFY"],
        ),
        (
            vec!["stats", "--watch", "0", "--pin-dir", pin],
            vec!["--watch"],
        ),
        (
            vec!["stats", "--watch", "nan", "--pin-dir", pin],
            vec!["--watch"],
        ),
        // The verb is judged before the (missing) pin dir is looked at.
        (
            vec!["policy", "allow", "NOT A VERB", "--pin-dir", pin],
            vec!["not a verb"],
        ),
        (
            vec!["policy", "deny", "TOOLONGVERB", "--pin-dir", pin],
            vec!["TOOLONGVERB"],
        ),
    ];
    for (args, mentions) in cases {
        let out = inspector_in(&ns, &args);
        assert_one_line_refusal(
            &format!("{args:?}"),
            out.status.code(),
            &out.stderr,
            &mentions,
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out}");
    }
    assert!(
        !pins.exists(),
        "a refused command created {}",
        pins.display()
    );
    // clap's own refusals are 2 as well.
    for args in [
        &["stats", "--watch", "soon"][..],
        &["attach"],
        &["frobnicate"],
    ] {
        let out = inspector_in(&ns, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out}");
    }
}

/// `detach` with nothing attached succeeds and says so, as often as it is
/// run; after a real detach, the second one is a no-op too.
#[test]
fn detach_is_idempotent() {
    let v = Veths::new("opc");
    let dir = unique_pin_dir();
    let pin = dir.to_str().unwrap();
    for _ in 0..2 {
        let out = inspector_in(&v.ns, &["detach", "--pin-dir", pin]);
        assert!(out.status.success(), "{out}");
        assert!(out.stdout_str().contains("nothing to detach"), "{out}");
    }
    persisted(&v.ns, &[&v.a, &v.b], &dir, &[]);
    let out = inspector_in(&v.ns, &["detach", "--iface", &v.b, "--pin-dir", pin]);
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout_str().contains(&format!("detached from {}", v.b)),
        "{out}"
    );
    let again = inspector_in(&v.ns, &["detach", "--iface", &v.b, "--pin-dir", pin]);
    assert!(again.status.success(), "{again}");
    assert!(
        again
            .stdout_str()
            .contains(&format!("nothing to detach on `{}`", v.b)),
        "{again}"
    );
    let out = inspector_in(&v.ns, &["detach", "--pin-dir", pin]);
    assert!(out.status.success(), "{out}");
    assert_eq!(v.ns.xdp_prog_id(&v.a), None, "{out}");
    assert!(!dir.exists(), "{out}");
    let out = inspector_in(&v.ns, &["detach", "--pin-dir", pin]);
    assert!(
        out.status.success() && out.stdout_str().contains("nothing to detach"),
        "{out}"
    );
}

// ---------------------------------------------------------------------
// Pipes
// ---------------------------------------------------------------------

/// Runs `inspector args` in `ns` with stdout into a pipe, reads the first
/// line, closes the pipe (what `head -1` does), and returns that line and
/// how the process ended: it must end by itself at its next write.
fn first_line_then_close(ns: &NetNs, args: &[&str]) -> (String, Finished) {
    let mut c = ns.nsenter(inspector_bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawning inspector");
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    r.read_line(&mut first).expect("reading the first line");
    drop(r);
    let deadline = Instant::now() + STEP_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`inspector {args:?}` kept running after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = err.join().unwrap();
    (
        first,
        Finished {
            what: format!("inspector {args:?}"),
            status,
            stdout: Vec::new(),
            stderr,
        },
    )
}

/// `stats --watch 0.1 | head -1`, the same with `--json`, and `events |
/// head -1` (text and JSON): the first line arrives, then the tool ends
/// with status 0 and nothing on stderr (no panic, no error).
#[test]
fn closed_pipe_ends_output_quietly() {
    let bed = Testbed::new(Offloads::Default);
    let _smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);
    let inspector = Inspector::attach(&bed.gateway, &bed.gateway_ifaces());
    let pin = inspector.pin_dir().to_str().unwrap().to_string();
    for args in [
        vec!["stats", "--watch", "0.1", "--pin-dir", &pin],
        vec!["stats", "--watch", "0.1", "--json", "--pin-dir", &pin],
        vec!["status", "--pin-dir", &pin],
    ] {
        let (first, out) = first_line_then_close(&bed.gateway, &args);
        assert!(!first.is_empty(), "{out}");
        assert_eq!(out.status.code(), Some(0), "{out}");
        assert!(out.stderr.is_empty(), "{out}");
    }
    // Masked sessions keep coming from another thread, so `events` has a
    // first line to print and a next one to fail on.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let session = Script::new()
        .cmd("EHLO client.test\r\n")
        .cmd("STARTTLS\r\n")
        .cmd("QUIT\r\n");
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 300 {
                client::run(&bed.client, SERVER_V4, 25, &session);
                n += 1;
            }
        });
        for json in [false, true] {
            let mut args = vec!["events", "--pin-dir", &pin];
            if json {
                args.push("--json");
            }
            let (first, out) = first_line_then_close(&bed.gateway, &args);
            stop.store(json, std::sync::atomic::Ordering::Relaxed);
            assert!(first.contains("STARTTLS"), "{first}\n{out}");
            assert_eq!(out.status.code(), Some(0), "{out}");
            assert!(out.stderr.is_empty(), "{out}");
        }
    });
}

/// `stats --watch` into a pipe: no terminal escapes, one titled block per
/// refresh; with `--json`, one JSON object a line with `version`, `time`,
/// `rates` and every counter.
#[test]
fn watch_into_a_pipe_is_plain_and_combines_with_json() {
    let v = Veths::new("opc");
    let inspector = Inspector::attach(&v.ns, &[&v.a, &v.b]);
    let pin = inspector.pin_dir().to_str().unwrap().to_string();
    for json in [false, true] {
        let mut c = v.ns.nsenter(inspector_bin());
        c.args(["stats", "--watch", "0.1", "--pin-dir", &pin]);
        if json {
            c.arg("--json");
        }
        let p = inspector_tests::proc::Proc::spawn(&mut c);
        let lines = wait_until("three refreshes", STEP_TIMEOUT, || {
            let text = String::from_utf8_lossy(&p.stdout()).into_owned();
            let n = if json {
                text.lines().count()
            } else {
                text.matches("inspector stats at ").count()
            };
            (n >= 3).then_some(text)
        });
        drop(p);
        assert!(!lines.contains('\x1b'), "escapes into a pipe:\n{lines}");
        if json {
            for l in lines.lines().take(3) {
                let o: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {l}"));
                assert_eq!(o["version"], 1, "{l}");
                assert!(o["time"].is_string(), "{l}");
                assert!(o["rates"]["packets_seen"].is_number(), "{l}");
                for c in inspector_common::counters::Counter::ALL {
                    assert!(o[c.name()].is_u64(), "{} missing: {l}", c.name());
                }
                assert!(o["flows_evicted"].is_u64(), "{l}");
            }
        } else {
            let block = lines.split("inspector stats at ").nth(1).unwrap();
            assert!(
                block
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some("commands_masked")),
                "{block}"
            );
        }
    }
}

/// A policy file and options that replace its keys: each replacement is
/// logged, the options win, and the policy's origin is in the log.
#[test]
fn options_replacing_file_keys_are_logged() {
    let v = Veths::new("opc");
    let tmp = inspector_tests::temp_dir("opc");
    let file = write_policy(
        tmp.path(),
        "p.toml",
        "ports = [2525]\nmidstream = \"drop\"\ndeny = [\"VRFY\"]\n",
    );
    let i = Attach::new(&v.ns, &[&v.a])
        .arg("--policy")
        .arg(&file)
        .arg("--port")
        .arg("25")
        .arg("--midstream")
        .arg("pass")
        .arg("--allow")
        .arg("VRFY")
        .start()
        .unwrap_or_else(|f| panic!("attach: {}", f.stderr));
    let log = i.stderr();
    for want in [
        format!("--port [25] replaces ports = [2525] of policy file {file}"),
        format!("--midstream pass replaces midstream = drop of policy file {file}"),
        format!("--allow VRFY undoes deny = [.. VRFY ..] of policy file {file}"),
    ] {
        assert!(log.contains(&want), "no `{want}` in:\n{log}");
    }
    let status = inspector_in(
        &v.ns,
        &[
            "status",
            "--json",
            "--pin-dir",
            i.pin_dir().to_str().unwrap(),
        ],
    );
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["ports"], serde_json::json!([25]), "{st}");
    assert_eq!(st["midstream"], "pass", "{st}");
    assert!(
        st["allowed"].as_array().unwrap().contains(&"VRFY".into()),
        "{st}"
    );
}

// ---------------------------------------------------------------------
// Pin dirs: what the operator made stays, what the tool made goes
// ---------------------------------------------------------------------

/// A scratch folder for pin-dir tests, `/tmp/inspt-<id>`, unmounted and
/// removed on drop whatever happened.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "{}-{}",
            inspector_tests::NAME_PREFIX,
            inspector_tests::unique_id()
        ));
        std::fs::create_dir(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Mounts below first (lazily: a failed test may have left one).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.0))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = run(&mut inspector_tests::proc::cmd("umount", &["-l", m]));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mount_bpffs(at: &Path) {
    let out = run(&mut inspector_tests::proc::cmd(
        "mount",
        &["-t", "bpf", "bpf", at.to_str().unwrap()],
    ));
    assert!(out.status.success(), "{out}");
}

fn is_mount_point(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.to_str().unwrap()))
}

/// What a folder holds, without the two iterators the kernel puts at the
/// root of every bpffs mount (bpf_preload).
fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "maps.debug" && n != "progs.debug")
        .collect();
    v.sort();
    v
}

/// Attaches with `dir`, stops with SIGTERM: exit 0, and returns the log.
fn attach_and_stop(v: &Veths, dir: &Path, persist: bool) -> String {
    let mut a = Attach::new(&v.ns, &[&v.a, &v.b]).pin_dir(dir);
    if persist {
        a = a.arg("--persist");
    }
    let mut i = a
        .start()
        .unwrap_or_else(|f| panic!("attach --pin-dir {}: {}", dir.display(), f.stderr));
    let stopped = i.stop_leaving_pin_dir(libc::SIGTERM);
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "attach --pin-dir {} after SIGTERM:\n{}",
        dir.display(),
        stopped.stderr
    );
    if !persist {
        assert_eq!(v.ns.xdp_prog_id(&v.a), None, "{}", stopped.stderr);
    }
    stopped.stderr
}

/// A bpffs the operator mounted: used as it is, the pins removed on a
/// clean stop, the mount and the folder left, exit 0.
#[test]
fn pin_dir_on_a_bpffs_the_operator_mounted_stays() {
    let v = Veths::new("opc");
    let s = Scratch::new();
    let dir = s.0.join("bpf");
    std::fs::create_dir(&dir).unwrap();
    mount_bpffs(&dir);
    let log = attach_and_stop(&v, &dir, false);
    assert!(
        is_mount_point(&dir),
        "the operator's bpffs was unmounted\n{log}"
    );
    assert!(
        entries(&dir).is_empty(),
        "pins left: {:?}\n{log}",
        entries(&dir)
    );
    assert!(!log.contains("mounted a bpf"), "{log}");
}

/// An empty folder the operator made (not a bpffs): the tool mounts a
/// bpffs on it, says so, and on a clean stop unmounts it and leaves the
/// folder.
#[test]
fn pin_dir_the_operator_made_is_not_removed() {
    let v = Veths::new("opc");
    let s = Scratch::new();
    let dir = s.0.join("pins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(s.0.join("pins-sibling"), b"mine").unwrap();
    let log = attach_and_stop(&v, &dir, false);
    assert!(
        log.contains(&format!("mounted a bpf filesystem at {}", dir.display())),
        "{log}"
    );
    assert!(dir.is_dir(), "the operator's folder was removed\n{log}");
    assert!(!is_mount_point(&dir), "the tool's mount was left\n{log}");
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
    assert!(s.0.join("pins-sibling").exists());
}

/// A nested path whose folders do not exist: all of them are created, and
/// all of them removed on a clean stop (the operator's folder above
/// stays); the same after `--persist` and `detach`.
#[test]
fn nested_pin_dir_leaves_nothing_behind() {
    let v = Veths::new("opc");
    let s = Scratch::new();
    let dir = s.0.join("a/b/c");
    let log = attach_and_stop(&v, &dir, false);
    assert_eq!(entries(&s.0), Vec::<String>::new(), "left behind\n{log}");
    assert!(!is_mount_point(&dir));

    attach_and_stop(&v, &dir, true);
    assert!(
        is_mount_point(&dir),
        "--persist keeps the pins (and their bpffs)"
    );
    let out = inspector_in(&v.ns, &["detach", "--pin-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out}");
    assert_eq!(v.ns.xdp_prog_id(&v.a), None, "{out}");
    assert_eq!(
        entries(&s.0),
        Vec::<String>::new(),
        "left behind after detach\n{out}"
    );
}

/// A pin dir that also holds the operator's own things: a folder on
/// bpffs, and files under a folder the tool mounts over. A clean stop
/// exits 0 and leaves them as they were.
#[test]
fn pin_dir_holding_other_things_keeps_them() {
    let v = Veths::new("opc");
    // On the host's bpffs, a folder the operator made with a sub-folder.
    let dir = unique_pin_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(dir.join("mine")).unwrap();
    let log = attach_and_stop(&v, &dir, false);
    let left = entries(&dir);
    let _ = std::fs::remove_dir(dir.join("mine"));
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(left, ["mine"], "{log}");

    // A plain folder holding a file: mounted over, then given back.
    let s = Scratch::new();
    let dir = s.0.join("pins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let log = attach_and_stop(&v, &dir, false);
    assert_eq!(entries(&dir), ["notes.txt"], "{log}");
    assert!(!is_mount_point(&dir), "{log}");
}

// ---------------------------------------------------------------------
// One inspector per interface
// ---------------------------------------------------------------------

/// Program ids on `iface`'s TCX ingress and egress, as the kernel says.
fn tcx_progs(ns: &NetNs, iface: &str) -> Vec<u32> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let iface = iface.to_string();
    in_netns(ns, move || {
        let mut v = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, t).unwrap();
            v.extend(progs.iter().map(|p| p.id()));
        }
        v
    })
}

/// `attach --persist` on two interfaces, then `attach` on one of them with
/// the same pin dir: the dropped interface is detached, and the log says
/// so; `status` shows one interface.
#[test]
fn reattach_with_fewer_interfaces_detaches_the_dropped_one() {
    let v = Veths::new("opc");
    let dir = unique_pin_dir();
    persisted(&v.ns, &[&v.a, &v.b], &dir, &[]);
    assert!(v.ns.xdp_prog_id(&v.b).is_some());
    let i = Attach::new(&v.ns, &[&v.a])
        .pin_dir(&dir)
        .start()
        .unwrap_or_else(|f| panic!("attach: {}", f.stderr));
    let log = i.stderr();
    assert!(
        log.contains(&format!("detached from {} (xdp)", v.b)),
        "no word of the dropped interface:\n{log}"
    );
    assert_eq!(v.ns.xdp_prog_id(&v.b), None, "{log}");
    let a_prog = v.ns.xdp_prog_id(&v.a).expect("still on the named one");
    let out = inspector_in(
        &v.ns,
        &["status", "--json", "--pin-dir", dir.to_str().unwrap()],
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let attached = st["attached"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "{st}");
    assert_eq!(attached[0]["interface"], v.a.as_str(), "{st}");
    assert_eq!(attached[0]["program_id"], a_prog, "{st}");
    drop(i); // SIGINT: detaches and removes everything (checked by Drop)
    assert_eq!(v.ns.xdp_prog_id(&v.a), None);
}

/// A second inspector on an interface, with another pin dir, in the same
/// or another mode: refused with one line naming the interface, and the
/// first one keeps running untouched. Both ways round (XDP first, then TC
/// first), and also when the first was stopped with `--persist` (no
/// process left: only the kernel knows).
#[test]
fn second_inspector_on_an_interface_is_refused() {
    let v = Veths::new("opc");
    let first = Inspector::attach(&v.ns, &[&v.a]);
    let xdp = v.ns.xdp_prog_id(&v.a).expect("XDP attached");
    for mode in ["tc", "xdp", "xdp-skb"] {
        let other = unique_pin_dir();
        let r = Attach::new(&v.ns, &[&v.b, &v.a])
            .pin_dir(&other)
            .arg("--mode")
            .arg(mode)
            .start();
        let f = match r {
            Ok(mut i) => {
                let _ = i.stop_with(libc::SIGINT);
                panic!("a second inspector in mode {mode} was accepted on {}", v.a);
            }
            Err(f) => f,
        };
        inspector_tests::assert_one_line_error(
            &format!("--mode {mode} on an inspected interface"),
            f.status.code(),
            &f.stderr,
            &[&v.a, "of another inspector"],
        );
        assert!(!other.exists(), "{}", other.display());
        assert_eq!(v.ns.xdp_prog_id(&v.a), Some(xdp));
        assert_eq!(v.ns.xdp_prog_id(&v.b), None, "{mode}: {}", f.stderr);
        assert_eq!(tcx_progs(&v.ns, &v.a), Vec::<u32>::new(), "{mode}");
        assert_eq!(tcx_progs(&v.ns, &v.b), Vec::<u32>::new(), "{mode}");
    }
    drop(first);

    // TC first, persisted (no process left), then XDP with another pin dir.
    let dir = unique_pin_dir();
    persisted(&v.ns, &[&v.b], &dir, &["--mode", "tc"]);
    let tc = tcx_progs(&v.ns, &v.b);
    assert_eq!(tc.len(), 2, "ingress and egress");
    let other = unique_pin_dir();
    let r = Attach::new(&v.ns, &[&v.b]).pin_dir(&other).start();
    let f = r
        .err()
        .expect("an XDP inspector was accepted on a TC-inspected interface");
    inspector_tests::assert_one_line_error("xdp after tc", f.status.code(), &f.stderr, &[&v.b]);
    assert_eq!(v.ns.xdp_prog_id(&v.b), None);
    assert_eq!(tcx_progs(&v.ns, &v.b), tc);
    // The same pin dir takes over as before.
    let i = Attach::new(&v.ns, &[&v.b])
        .pin_dir(&dir)
        .arg("--mode")
        .arg("tc")
        .start()
        .unwrap_or_else(|f| panic!("takeover: {}", f.stderr));
    assert!(
        i.stderr().contains("took over 2 pinned link(s)"),
        "{}",
        i.stderr()
    );
    drop(i);
    assert_eq!(tcx_progs(&v.ns, &v.b), Vec::<u32>::new());
}

// ---------------------------------------------------------------------
// Live policy across a restart
// ---------------------------------------------------------------------

fn allowed_now(ns: &NetNs, dir: &Path) -> Vec<String> {
    shown(ns, dir)["allowed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The README's upgrade path with a live change in between: `policy allow
/// XFOO` (runtime) says it lasts until the next start; `policy allow XBAR
/// --permanent` writes the policy file (its comment kept); after a restart
/// on the same pin dir, the log says which policy is in force and where it
/// came from, and that the runtime XFOO was replaced; XBAR is still
/// allowed, XFOO masked again.
#[test]
fn live_policy_change_across_a_restart_is_said() {
    let v = Veths::new("opc");
    let tmp = inspector_tests::temp_dir("opc");
    let file = write_policy(
        tmp.path(),
        "policy.toml",
        "# the gateway's policy\ndeny = [\"VRFY\"]\n",
    );
    let dir = unique_pin_dir();
    let pin = dir.to_str().unwrap();
    let log = persisted(&v.ns, &[&v.a, &v.b], &dir, &["--policy", &file]);
    assert!(
        log.contains(&format!("from the default list, policy file {file}")),
        "{log}"
    );

    let out = inspector_in(&v.ns, &["policy", "allow", "xfoo", "--pin-dir", pin]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout_str().contains("runtime"), "{out}");
    let out = inspector_in(
        &v.ns,
        &[
            "policy",
            "allow",
            "XBAR",
            "--permanent",
            "--policy",
            &file,
            "--pin-dir",
            pin,
        ],
    );
    assert!(out.status.success(), "{out}");
    assert!(out.stdout_str().contains("permanent"), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# the gateway's policy") && text.contains("XBAR"),
        "{text}"
    );
    let now = allowed_now(&v.ns, &dir);
    assert!(
        now.contains(&"XFOO".into()) && now.contains(&"XBAR".into()),
        "{now:?}"
    );

    // The restart (systemctl restart): same command line, same pin dir.
    let i = Attach::new(&v.ns, &[&v.a, &v.b])
        .pin_dir(&dir)
        .arg("--policy")
        .arg(&file)
        .start()
        .unwrap_or_else(|f| panic!("restart: {}", f.stderr));
    let log = i.stderr();
    assert!(log.contains("took over"), "{log}");
    assert!(log.contains("policy in force:"), "{log}");
    assert!(log.contains(&format!("policy file {file}")), "{log}");
    assert!(log.contains("allowed XFOO (masked again now)"), "{log}");
    assert!(!log.contains("XBAR (masked"), "{log}");
    let now = allowed_now(&v.ns, &dir);
    assert!(!now.contains(&"XFOO".into()), "{now:?}");
    assert!(now.contains(&"XBAR".into()), "{now:?}");
    assert!(!now.contains(&"VRFY".into()), "{now:?}");
}

/// `policy show --json` of the instance at `dir`.
fn shown(ns: &NetNs, dir: &Path) -> Value {
    let out = inspector_in(
        ns,
        &[
            "policy",
            "show",
            "--json",
            "--pin-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Limits and switches, live: `policy limit` and `policy set` change the
/// running instance; with --permanent they are written into the policy
/// file (comments kept) and survive a restart, without it they do not.
/// `mask` on a line rule is refused (exit 2) and changes nothing.
#[test]
fn live_limits_and_switches_survive_a_restart_only_when_permanent() {
    let v = Veths::new("opl");
    let tmp = inspector_tests::temp_dir("opl");
    let file = write_policy(
        tmp.path(),
        "policy.toml",
        "# limits\nrcpt_limit = \"log\" # lists\n",
    );
    let dir = unique_pin_dir();
    let pin = dir.to_str().unwrap();
    persisted(&v.ns, &[&v.a, &v.b], &dir, &["--policy", &file]);
    let s = shown(&v.ns, &dir);
    assert_eq!(s["limits"]["rcpts"], "log", "{s}");
    assert_eq!(s["limits"]["header_line"], "drop-connection", "{s}");

    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--pin-dir", pin]);
        inspector_in(&v.ns, &a)
    };
    let out = run(&[
        "policy",
        "limit",
        "address-chars",
        "mask",
        "--permanent",
        "--policy",
        &file,
    ]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout_str().contains("address_chars=mask"), "{out}");
    let out = run(&[
        "policy",
        "set",
        "mask-banner",
        "on",
        "--permanent",
        "--policy",
        &file,
    ]);
    assert!(out.status.success(), "{out}");
    let out = run(&["policy", "limit", "rcpts", "reset"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout_str().contains("runtime"), "{out}");
    let out = run(&["policy", "limit", "header-line", "mask"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("`mask` does not apply to a whole line"),
        "{out}"
    );
    let s = shown(&v.ns, &dir);
    assert_eq!(s["limits"]["address_chars"], "mask", "{s}");
    assert_eq!(s["limits"]["rcpts"], "reset", "{s}");
    assert_eq!(s["limits"]["header_line"], "drop-connection", "{s}");
    assert_eq!(s["mask_banner"], true, "{s}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# limits") && text.contains("rcpt_limit = \"log\" # lists"),
        "{text}"
    );
    assert!(text.contains("address_chars_limit = \"mask\""), "{text}");
    assert!(text.contains("mask_banner = true"), "{text}");

    let i = Attach::new(&v.ns, &[&v.a, &v.b])
        .pin_dir(&dir)
        .arg("--policy")
        .arg(&file)
        .start()
        .unwrap_or_else(|f| panic!("restart: {}", f.stderr));
    let s = shown(&v.ns, &dir);
    assert_eq!(s["limits"]["address_chars"], "mask", "permanent: {s}");
    assert_eq!(s["mask_banner"], true, "permanent: {s}");
    assert_eq!(s["limits"]["rcpts"], "log", "runtime only: {s}");
    drop(i);
}

// ---------------------------------------------------------------------
// The journal
// ---------------------------------------------------------------------

/// The message id of mask lines (README "The journal").
const MASK_ID: &str = "MESSAGE_ID=b0f7e1c2a3d44e5f8a6b7c8d9e0f1a21";
const SUPPRESSED_ID: &str = "MESSAGE_ID=b0f7e1c2a3d44e5f8a6b7c8d9e0f1a25";

/// `attach` logs each masked command as one key=value line with a stable
/// message id, the client, server and verb; past 20 lines in 10 s the rest
/// are counted in one `suppressed=N` line; lines and count add up to the
/// masks. `inspector events` still sees every one (through `attach`).
#[test]
fn masks_are_in_the_log_rate_limited_with_a_count() {
    const MASKS: usize = 25;
    let bed = Testbed::new(Offloads::Default);
    let _smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);
    let i = Inspector::attach(&bed.gateway, &bed.gateway_ifaces());
    let events = Events::start(i.pin_dir());
    let mut script = Script::new().cmd("EHLO client.test\r\n");
    for _ in 0..MASKS {
        script = script.cmd("STARTTLS\r\n");
    }
    let t = client::run(&bed.client, SERVER_V4, 25, &script.cmd("QUIT\r\n"));
    let client_addr = t.local.to_string();
    let count = |log: &str| -> (usize, u64) {
        let lines = log.lines().filter(|l| l.contains(MASK_ID)).count();
        let suppressed = log
            .lines()
            .filter(|l| l.contains(SUPPRESSED_ID))
            .filter_map(|l| {
                l.split("suppressed=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        (lines, suppressed)
    };
    let log = wait_until("every mask logged or counted", STEP_TIMEOUT, || {
        let log = i.stderr();
        let (n, s) = count(&log);
        (n as u64 + s >= MASKS as u64).then_some(log)
    });
    let (n, s) = count(&log);
    assert_eq!(n as u64 + s, MASKS as u64, "{log}");
    assert!(
        s > 0 && n <= 20,
        "the rate limit did not act: {n} lines, {s} counted\n{log}"
    );
    let line = log.lines().find(|l| l.contains(MASK_ID)).unwrap();
    for want in [
        "action=mask".to_string(),
        format!("client={client_addr}"),
        "server=10.200.2.2:25".to_string(),
        "verb=STARTTLS".to_string(),
        "reason=-".to_string(),
    ] {
        assert!(line.contains(&want), "no `{want}` in: {line}");
    }
    // The events reader got all of them, not a share.
    events.wait_for("mask events", MASKS, STEP_TIMEOUT, |e| {
        e["kind"] == "masked"
    });
}

// ---------------------------------------------------------------------
// systemd, completions, man page
// ---------------------------------------------------------------------

fn unit_path() -> std::path::PathBuf {
    inspector_tests::workspace_root().join("deploy/inspector.service")
}

/// `systemd-analyze security` rates the unit 3.0 or better, and it keeps
/// the capabilities BPF needs; it is Type=notify and does not restart on
/// refused input (exit status 2).
#[test]
fn systemd_unit_is_hardened_and_does_not_loop_on_config_errors() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    for want in [
        "Type=notify",
        "RestartPreventExitStatus=2",
        "Restart=on-failure",
        "Documentation=man:inspector(8)",
    ] {
        assert!(unit.lines().any(|l| l == want), "no `{want}` in the unit");
    }
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"] {
        assert!(
            caps.split_whitespace().any(|c| c == cap),
            "{cap} missing: {caps}"
        );
    }
    let out = run(inspector_tests::proc::cmd(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--no-pager",
            unit_path().to_str().unwrap(),
        ],
    )
    .env("SYSTEMD_COLORS", "0"));
    let text = out.stdout_str();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for inspector.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level: {out}"));
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");
}

/// `systemd-analyze verify` accepts the unit as installed by the comment
/// at its top: the binary at /usr/local/sbin, the man page its
/// Documentation= names (generated by `inspector man`) found by man.
#[test]
fn systemd_unit_verifies_with_its_documentation() {
    let root = inspector_tests::temp_dir("opc");
    let r = root.path();
    for d in [
        "usr/local/sbin",
        "etc/systemd/system",
        "usr/lib/systemd",
        "usr/local/share/man/man8",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    // The system's own units (sysinit.target...), which the unit orders
    // itself against.
    let out = run(&mut inspector_tests::proc::cmd(
        "cp",
        &[
            "-r",
            "/lib/systemd/system",
            r.join("usr/lib/systemd").to_str().unwrap(),
        ],
    ));
    assert!(out.status.success(), "{out}");
    std::fs::copy(inspector_bin(), r.join("usr/local/sbin/inspector")).unwrap();
    std::fs::copy(unit_path(), r.join("etc/systemd/system/inspector.service")).unwrap();
    let man = run(Command::new(inspector_bin()).arg("man"));
    assert!(man.status.success(), "{man}");
    std::fs::write(r.join("usr/local/share/man/man8/inspector.8"), &man.stdout).unwrap();
    let out = run(inspector_tests::proc::cmd(
        "systemd-analyze",
        &[
            "verify",
            &format!("--root={}", r.display()),
            "inspector.service",
        ],
    )
    .env("MANPATH", r.join("usr/local/share/man")));
    assert!(out.status.success(), "{out}");
    assert!(out.stderr.trim().is_empty(), "{out}");
}

/// With $NOTIFY_SOCKET (as under Type=notify), `attach` sends READY=1
/// only once it is attached, and STOPPING=1 on SIGTERM; a failing attach
/// sends nothing.
#[test]
fn attach_tells_systemd_when_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let v = Veths::new("opc");
    let dir = inspector_tests::temp_dir("opc");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let env_arg = format!("NOTIFY_SOCKET={}", sock_path.display());

    // Refused: nothing is sent.
    let r = Attach::new(&v.ns, &["inspt-none0"])
        .wrapped_in(&["env", &env_arg])
        .start();
    assert!(r.is_err(), "attach on a missing interface started");
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(
        sock.recv(&mut buf).is_err(),
        "a failed attach notified systemd"
    );
    sock.set_nonblocking(false).unwrap();

    let mut i = Attach::new(&v.ns, &[&v.a])
        .wrapped_in(&["env", &env_arg])
        .start()
        .unwrap_or_else(|f| panic!("attach: {}", f.stderr));
    let n = sock.recv(&mut buf).expect("READY=1 from attach");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // It was ready when it said so: the program is on the interface.
    assert!(v.ns.xdp_prog_id(&v.a).is_some());
    let stopped = i.stop_with(libc::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let n = sock.recv(&mut buf).expect("STOPPING=1 from attach");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// `inspector completions SHELL` for bash, zsh and fish, and `inspector
/// man`: generated from the command line's schema, naming every
/// subcommand; the bash script parses, the man page renders.
#[test]
fn completions_and_man_page() {
    let subcommands = ["attach", "detach", "status", "stats", "policy", "events"];
    for shell in ["bash", "zsh", "fish"] {
        let out = run(Command::new(inspector_bin()).args(["completions", shell]));
        assert!(out.status.success(), "{out}");
        let text = out.stdout_str();
        for s in subcommands {
            assert!(text.contains(s), "{shell}: no {s}");
        }
        if shell == "bash" {
            let check = run(&mut inspector_tests::proc::cmd(
                "bash",
                &["-n", "-c", &text],
            ));
            assert!(check.status.success(), "{check}");
        }
    }
    let out = run(Command::new(inspector_bin()).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "{out}");

    let man = run(Command::new(inspector_bin()).arg("man"));
    assert!(man.status.success(), "{man}");
    let roff = man.stdout_str();
    assert!(roff.contains(".TH inspector 8"), "{roff}");
    let mut render = Command::new("man");
    render
        .args(["-l", "-"])
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0");
    render
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = render.spawn().expect("man");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), roff.as_bytes()).unwrap();
    let rendered = child.wait_with_output().unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    // Without a terminal, man still overstrikes bold text (`c\x08c`).
    let mut text = String::new();
    for c in String::from_utf8_lossy(&rendered.stdout).chars() {
        if c == '\x08' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    for s in subcommands {
        assert!(
            text.contains(&format!("INSPECTOR {}", s.to_uppercase())),
            "no section for {s}:\n{text}"
        );
    }
    assert!(text.contains("--persist"), "{text}");
}

// ---------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------

/// `curl` inside `ns` with extra arguments: (status, headers, body).
fn curl(ns: &NetNs, args: &[&str], url: &str) -> (u16, String, String) {
    let mut c = ns.nsenter("curl");
    c.args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .arg(url);
    let out = run(&mut c);
    assert!(out.status.success(), "{out}");
    let text = out.stdout_str();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {url}: {out}"));
    (code, head.to_string(), body.to_string())
}

/// The exposition parsed by the Prometheus project's own Python parser
/// (prometheus_client.parser, Debian's python3-prometheus-client):
/// `{sample name: [(labels, value)]}` and `{family name: type}`.
fn parse_exposition(body: &str) -> (Value, Value) {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = {}, {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    types[fam.name] = fam.type
    for s in fam.samples:
        samples.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps([samples, types]))
"#;
    let mut c = Command::new(inspector_tests::smtpd::PYTHON);
    c.args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v[0].clone(), v[1].clone())
}

/// GET and HEAD on /metrics with or without a query answer 200; `/`,
/// other paths and other methods 404. What is served parses with a real
/// Prometheus parser: every `stats` counter under its unit-last name
/// with the value `stats` shows, flows_evicted too, per-verb commands as
/// passed + masked adding up to the commands seen, and build info.
#[test]
fn metrics_follow_prometheus_conventions() {
    let bed = Testbed::new(Offloads::Default);
    let _smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);
    let port = in_netns(&bed.gateway, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let addr = format!("127.0.0.1:{port}");
    let i = Attach::new(&bed.gateway, &bed.gateway_ifaces())
        .arg("--metrics")
        .arg(&addr)
        .start()
        .unwrap_or_else(|f| panic!("attach --metrics: {}", f.stderr));
    let session = Script::new()
        .cmd("EHLO client.test\r\n")
        .cmd("STARTTLS\r\n")
        .cmd("VRFY bob\r\n")
        .cmd("QUIT\r\n");
    client::run(&bed.client, SERVER_V4, 25, &session);

    let base = format!("http://{addr}");
    for (args, path, want) in [
        (&[][..], "/metrics", 200),
        (&[], "/metrics?x=1&name[]=up", 200),
        (&["-I"], "/metrics", 200),
        (&["-I"], "/metrics?x=1", 200),
        (&[], "/", 404),
        (&[], "/metricsx", 404),
        (&[], "/metrics/", 404),
        (&["-X", "POST"], "/metrics", 404),
    ] {
        let (code, head, body) = curl(&bed.gateway, args, &format!("{base}{path}"));
        assert_eq!(code, want, "{args:?} {path}: {head}\n{body}");
        if args == ["-I"] {
            assert!(body.is_empty(), "HEAD with a body: {body}");
            assert!(
                head.to_lowercase().contains("content-type: text/plain"),
                "{head}"
            );
        }
    }
    let stats: Value = serde_json::from_slice(
        &inspector_in(
            &bed.gateway,
            &[
                "stats",
                "--json",
                "--pin-dir",
                i.pin_dir().to_str().unwrap(),
            ],
        )
        .stdout,
    )
    .unwrap();
    let (_, _, body) = curl(&bed.gateway, &[], &format!("{base}/metrics"));
    let (samples, types) = parse_exposition(&body);
    let value = |name: &str| -> f64 {
        samples[name][0][1]
            .as_f64()
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    let mut names: Vec<&str> = inspector_common::counters::Counter::ALL
        .iter()
        .map(|c| c.name())
        .collect();
    names.push("flows_evicted");
    for c in names {
        let m = inspector_userspace::metrics::metric_name(c);
        let v = value(&m);
        let family = m.trim_end_matches("_total");
        assert_eq!(types[family], "counter", "{m}: {types}");
        if !matches!(c, "packets_seen" | "packets_inspected") {
            // (other frames may still cross: neighbour discovery)
            assert_eq!(v, stats[c].as_u64().unwrap() as f64, "{m} vs stats {c}");
        }
    }
    for unit_first in [
        "inspector_bytes_inspected_total",
        "inspector_packets_seen_total",
    ] {
        assert!(
            samples.get(unit_first).is_none(),
            "{unit_first} still served"
        );
    }
    assert_eq!(
        value("inspector_inspected_bytes_total"),
        stats["bytes_inspected"].as_u64().unwrap() as f64
    );
    // passed + masked = seen, per verb; summing over actions does not
    // count a masked command twice.
    let commands = samples["inspector_commands_total"].as_array().unwrap();
    let get = |verb: &str, action: &str| -> f64 {
        commands
            .iter()
            .find(|s| s[0]["verb"] == verb && s[0]["action"] == action)
            .unwrap_or_else(|| panic!("no {verb}/{action} in {commands:?}"))[1]
            .as_f64()
            .unwrap()
    };
    for verb in ["STARTTLS", "VRFY", "EHLO"] {
        let (seen, masked) = (
            stats["verbs"][verb]["seen"].as_u64().unwrap() as f64,
            stats["verbs"][verb]["masked"].as_u64().unwrap() as f64,
        );
        assert_eq!(get(verb, "masked"), masked, "{verb}");
        assert_eq!(get(verb, "passed") + get(verb, "masked"), seen, "{verb}");
    }
    assert_eq!(get("STARTTLS", "masked"), 1.0);
    assert_eq!(get("STARTTLS", "passed"), 0.0);
    assert_eq!(get("VRFY", "passed"), 1.0);
    let total: f64 = commands.iter().map(|s| s[1].as_f64().unwrap()).sum();
    assert_eq!(total, stats["commands_seen"].as_u64().unwrap() as f64);
    assert!(commands
        .iter()
        .all(|s| s[0]["action"] == "passed" || s[0]["action"] == "masked"));
    let build = &samples["inspector_build_info"][0];
    assert_eq!(build[1], 1.0);
    assert!(build[0]["version"].is_string(), "{build}");
    assert_eq!(types["inspector_tracked_flows"], "gauge");
}

/// `RUST_LOG=debug` shows the inspector's own debug lines, not the
/// libraries' internals (aya's object parsing was hundreds of lines).
#[test]
fn debug_log_is_about_the_inspector() {
    let v = Veths::new("opc");
    let i = Attach::new(&v.ns, &[&v.a])
        .wrapped_in(&["env", "RUST_LOG=debug"])
        .start()
        .unwrap_or_else(|f| panic!("attach: {}", f.stderr));
    let log = i.stderr();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.len() < 40,
        "{} lines at start-up:\n{log}",
        lines.len()
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(" aya") || l.contains(" hyper") || l.contains(" mio")),
        "library internals:\n{log}"
    );
}

/// `inspector events` follows a restart of `attach` (`--persist`, then a
/// takeover, as `systemctl restart` does): the events of both instances,
/// in one reader.
#[test]
fn events_follow_a_restart() {
    let bed = Testbed::new(Offloads::Default);
    let _smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4], 25);
    let dir = unique_pin_dir();
    let start = || {
        Attach::new(&bed.gateway, &bed.gateway_ifaces())
            .pin_dir(&dir)
            .arg("--persist")
            .start()
            .unwrap_or_else(|f| panic!("attach: {}", f.stderr))
    };
    let mut first = start();
    let mut events = Events::start(&dir);
    let masked = |n: usize| {
        events.wait_for("mask events", n, STEP_TIMEOUT, |e| e["kind"] == "masked");
    };
    let session = Script::new()
        .cmd("EHLO client.test\r\n")
        .cmd("STARTTLS\r\n")
        .cmd("QUIT\r\n");
    client::run(&bed.client, SERVER_V4, 25, &session);
    masked(1);
    let stopped = first.stop_leaving_pin_dir(libc::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let second = start();
    assert!(second.stderr().contains("took over"), "{}", second.stderr());
    client::run(&bed.client, SERVER_V4, 25, &session);
    masked(2);
    assert!(!events.exited(), "events ended at the restart");
    let mut second = second;
    let stopped = second.stop_leaving_pin_dir(libc::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let out = inspector_in(
        &bed.gateway,
        &["detach", "--pin-dir", dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out}");
    std::mem::forget(first);
    std::mem::forget(second);
    let out = events.finish(STEP_TIMEOUT);
    assert!(
        out.status.success(),
        "events after attach stopped for good: {out}"
    );
}

/// Without CAP_SYS_ADMIN the kernel does not say which program runs on an
/// interface (lookups by id need it): `attach` says once that it could
/// not check, instead of silently assuming nobody is there.
#[test]
fn unchecked_interface_is_said() {
    let v = Veths::new("opc");
    let tc = Attach::new(&v.ns, &[&v.b])
        .arg("--mode")
        .arg("tc")
        .start()
        .unwrap_or_else(|f| panic!("attach --mode tc: {}", f.stderr));
    let i = Attach::new(&v.ns, &[&v.b])
        .wrapped_in(&[
            "setpriv",
            "--bounding-set=-sys_admin",
            "--inh-caps=-sys_admin",
        ])
        .start()
        .unwrap_or_else(|f| panic!("attach without CAP_SYS_ADMIN: {}", f.stderr));
    let log = i.stderr();
    let warned = log
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "could not check whether another inspector runs on `{}`",
                v.b
            ))
        })
        .count();
    assert_eq!(warned, 1, "{log}");
    drop(i);
    drop(tc);
}
