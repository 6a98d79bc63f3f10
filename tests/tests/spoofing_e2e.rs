//! docs/contract.md §9 (and §5's reordering) end to end: a hostile client
//! forges and reorders from its own side of the namespace gateway (docs/testbed.md, "Forging packets from
//! the client's side") with scapy (`testkit/py/forge_client.py`), against
//! the recording aiosmtpd server, with `inspector attach` at its defaults on
//! the gateway (XDP or `--mode tc`; two interfaces or one-armed). Whatever it
//! forges, the server never receives `VERB` unmasked, and the forgeries are
//! counted `spoofed`.
//!
//! Needs root; run with `--test-threads=1`.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use inspector_tests::{
    client::Smtp,
    inspector::{counter, status_json, Attach, Events},
    netns::{
        addr::{CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
        OneArmed,
    },
    proc::{run_ok, run_timeout},
    wait_until, Inspector, NetNs, Offloads, RecordingSmtpd, Testbed,
};

#[derive(Clone, Copy, Debug)]
enum Gateway {
    Xdp,
    Tc,
    /// One interface for both sides (XDP).
    OneArmed,
    /// One interface for both sides, `--mode tc`: every packet also leaves
    /// by the interface it came in on, past the egress program.
    OneArmedTc,
}

/// The test bed, either shape; fields drop in order (the inspector first).
struct Bed {
    inspector: Inspector,
    smtpd: RecordingSmtpd,
    two: Option<Testbed>,
    _one: Option<OneArmed>,
    client: PathBuf,
    client_if: String,
    gw_mac: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testkit/py/forge_client.py")
}

impl Bed {
    fn new(g: Gateway) -> Bed {
        Bed::with(g, &[])
    }

    /// [`Bed::new`], with more `attach` arguments.
    fn with(g: Gateway, extra: &[&str]) -> Bed {
        let (two, one) = match g {
            Gateway::OneArmed | Gateway::OneArmedTc => {
                (None, Some(OneArmed::new(Offloads::Default)))
            }
            _ => (Some(Testbed::new(Offloads::Default)), None),
        };
        let (client, gateway, server, client_if, gw_if, ifaces): (
            &NetNs,
            &NetNs,
            &NetNs,
            String,
            String,
            Vec<String>,
        ) = match (&two, &one) {
            (Some(t), _) => (
                &t.client,
                &t.gateway,
                &t.server,
                t.client_if.clone(),
                t.gw_client_if.clone(),
                t.gateway_ifaces().iter().map(|s| s.to_string()).collect(),
            ),
            (_, Some(o)) => (
                &o.client,
                &o.gateway,
                &o.server,
                o.client_if.clone(),
                o.gw_if.clone(),
                o.gateway_ifaces().iter().map(|s| s.to_string()).collect(),
            ),
            _ => unreachable!(),
        };
        let smtpd = RecordingSmtpd::start(server, &[SERVER_V4, SERVER_V6], 25);
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        let inspector = attach(gateway, &ifaces, g, extra, None);
        // The client's kernel must not reset the connection scapy owns.
        for tool in ["iptables", "ip6tables"] {
            run_ok(client.exec(tool).args([
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--tcp-flags",
                "RST",
                "RST",
                "-j",
                "DROP",
            ]));
        }
        let gw_mac = gateway.link_json(&gw_if)["address"]
            .as_str()
            .expect("the gateway's MAC")
            .to_string();
        Bed {
            inspector,
            smtpd,
            client: client.path(),
            client_if,
            gw_mac,
            two,
            _one: one,
        }
    }

    /// Runs `scenario` of the hostile client; returns its replies and error.
    fn attack(&self, v6: bool, scenario: &str, sport: u16) -> serde_json::Value {
        self.attack_with(v6, scenario, sport, &[])
    }

    /// [`Bed::attack`], with more arguments for the client.
    fn attack_with(
        &self,
        v6: bool,
        scenario: &str,
        sport: u16,
        extra: &[&str],
    ) -> serde_json::Value {
        client_output(
            scenario,
            run_timeout(
                &mut self.attack_cmd(v6, scenario, sport, extra),
                Duration::from_secs(90),
            ),
        )
    }

    /// The command that runs the hostile client (see [`Bed::attack_with`]).
    fn attack_cmd(
        &self,
        v6: bool,
        scenario: &str,
        sport: u16,
        extra: &[&str],
    ) -> std::process::Command {
        let (c, s) = if v6 {
            (CLIENT_V6, SERVER_V6)
        } else {
            (CLIENT_V4, SERVER_V4)
        };
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", self.client.display()))
            .arg("--")
            .arg("/usr/bin/python3")
            .arg(script())
            .args(["--iface", &self.client_if, "--gw-mac", &self.gw_mac])
            .args(["--client", &ip(c), "--server", &ip(s)])
            .args(["--sport", &sport.to_string(), "--scenario", scenario])
            .args(extra);
        cmd
    }

    fn context(&self) -> String {
        format!(
            "--- stats ---\n{}\n--- aiosmtpd ---\n{}\n--- inspector ---\n{}",
            self.inspector.stats_json(),
            self.smtpd.stderr(),
            self.inspector.stderr()
        )
    }
}

/// `inspector attach` on the gateway's `ifaces` in the mode of `g`, with
/// `extra` arguments, on `pin_dir` (to take over a killed one's pins).
fn attach(
    gateway: &NetNs,
    ifaces: &[&str],
    g: Gateway,
    extra: &[&str],
    pin_dir: Option<&std::path::Path>,
) -> Inspector {
    let mut attach = Attach::new(gateway, ifaces);
    if let Gateway::Tc | Gateway::OneArmedTc = g {
        attach = attach.arg("--mode").arg("tc");
    }
    if let Some(d) = pin_dir {
        attach = attach.pin_dir(d);
    }
    for a in extra {
        attach = attach.arg(*a);
    }
    attach
        .start()
        .unwrap_or_else(|f| panic!("inspector attach failed ({}):\n{}", f.status, f.stderr))
}

/// What the hostile client printed: its replies and error.
fn client_output(scenario: &str, out: inspector_tests::proc::Finished) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{scenario}: the client printed no JSON ({e}); status {}\nstdout: {}\nstderr: {}",
            out.status,
            out.stdout_str(),
            out.stderr
        )
    })
}

fn ip(a: IpAddr) -> String {
    a.to_string()
}

/// The server's command lines, upper-cased, line ends kept.
fn commands(bed: &Bed) -> Vec<String> {
    bed.smtpd
        .command_lines()
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_uppercase())
        .collect()
}

/// Runs `scenario` and checks the promise: `VERB` never reaches the server
/// unmasked; if `masked` it reached it masked (the session went on,
/// inspected); the forgeries were counted.
fn check(g: Gateway, v6: bool, scenario: &str, masked: bool, sport: u16) {
    let bed = Bed::new(g);
    let out = bed.attack(v6, scenario, sport);
    let what = format!("{scenario} {g:?} v6={v6}");
    let lines = commands(&bed);
    assert!(
        !lines.iter().any(|l| l.starts_with("VERB")),
        "{what}: the server received VERB unmasked: {lines:?}\nclient: {out}\n{}",
        bed.context()
    );
    if masked {
        assert!(
            lines.iter().any(|l| l == "XXXX\r\n"),
            "{what}: the server never received the masked VERB: {lines:?}\nclient: {out}\n{}",
            bed.context()
        );
        assert!(out["error"].is_null(), "{what}: {out}\n{}", bed.context());
    }
    let st = bed.inspector.stats_json();
    assert!(
        counter(&st, "spoofed") >= 1,
        "{what}: no forgery counted: {st}"
    );
}

#[test]
fn forged_354_xdp() {
    check(Gateway::Xdp, false, "forged-354", true, 43001);
    check(Gateway::Xdp, true, "forged-354", true, 43002);
}

#[test]
fn forged_354_tc() {
    check(Gateway::Tc, false, "forged-354", true, 43003);
    check(Gateway::Tc, true, "forged-354", true, 43004);
}

#[test]
fn forged_354_one_armed() {
    check(Gateway::OneArmed, false, "forged-354", true, 43005);
    check(Gateway::OneArmed, true, "forged-354", true, 43006);
    check(Gateway::OneArmedTc, false, "forged-354", true, 43007);
    check(Gateway::OneArmedTc, true, "forged-354", true, 43008);
}

#[test]
fn forged_ack_xdp_and_tc() {
    check(Gateway::Xdp, false, "forged-ack", false, 43011);
    check(Gateway::Tc, true, "forged-ack", false, 43012);
    check(Gateway::OneArmed, false, "forged-ack", false, 43013);
    check(Gateway::OneArmedTc, true, "forged-ack", false, 43014);
}

#[test]
fn forged_syn_ack_xdp_and_tc() {
    check(Gateway::Xdp, false, "forged-synack", true, 43021);
    check(Gateway::Tc, true, "forged-synack", true, 43022);
    check(Gateway::OneArmed, true, "forged-synack", true, 43023);
    check(Gateway::OneArmedTc, false, "forged-synack", true, 43024);
}

/// An IPv6 packet whose payload length is 0, with a hop-by-hop header but
/// no jumbo option: Linux takes it as long as its frame and forwards it,
/// and the server's stack reads its TCP segment. The inspector must not
/// pass it as malformed: it drops it (too large: more than it parses), and
/// the client's plain retransmission is masked. `VERB` never reaches the
/// server unmasked.
#[test]
fn an_ipv6_packet_of_length_zero_never_carries_a_verb_past() {
    for (g, sport) in [(Gateway::Xdp, 43071), (Gateway::Tc, 43072)] {
        let bed = Bed::new(g);
        let out = bed.attack(true, "zero-length", sport);
        let what = format!("{g:?}");
        assert!(out["error"].is_null(), "{what}: {out}\n{}", bed.context());
        assert_eq!(
            commands(&bed),
            ["EHLO CLIENT.TEST\r\n", "XXXX\r\n", "QUIT\r\n"],
            "{what}: client: {out}\n{}",
            bed.context()
        );
        let st = bed.inspector.stats_json();
        assert_eq!(counter(&st, "malformed"), 0, "{what}: {st}");
        assert_eq!(counter(&st, "dropped"), 1, "{what}: {st}");
    }
}

/// docs/contract.md §5 against a client that reorders on purpose: it sends
/// `VERB x` before the `NOOP` that precedes it in the stream. The segment
/// ahead goes to the reassembly fallback, and so does the one that fills
/// the gap (one owner at a time); both are written back and inspected in
/// order: the server reads `NOOP` and the masked verb. With `attach_args`
/// the fallback's limits make it drop the segment it held (or there is no
/// fallback), and the client's own retransmission, in order, is masked the
/// same. With `event`, it also checks that `inspector events` reports a
/// drop of the client's flow for that reason. Returns the inspector's
/// counters.
fn reordered_on_purpose(
    g: Gateway,
    v6: bool,
    sport: u16,
    attach_args: &[&str],
    client_args: &[&str],
    event: Option<&str>,
) -> serde_json::Value {
    let bed = Bed::with(g, attach_args);
    let out = bed.attack_with(v6, "reorder", sport, client_args);
    let what = format!("reorder {g:?} v6={v6} {attach_args:?}");
    assert!(out["error"].is_null(), "{what}: {out}\n{}", bed.context());
    let lines = commands(&bed);
    assert_eq!(
        lines,
        ["EHLO CLIENT.TEST\r\n", "NOOP\r\n", "XXXX X\r\n", "QUIT\r\n"],
        "{what}: client: {out}\n{}",
        bed.context()
    );
    let replies: Vec<&str> = out["replies"]
        .as_array()
        .expect("replies")
        .iter()
        .map(|r| r.as_str().unwrap_or_default())
        .collect();
    assert!(replies[2].starts_with("250"), "{what}: NOOP: {out}");
    assert!(
        replies[3].starts_with("500"),
        "{what}: the masked verb: {out}"
    );
    if let Some(reason) = event {
        let events = Events::start(bed.inspector.pin_dir());
        let port = format!(":{sport}");
        events.wait_for(
            &format!("{reason} events of the client's flow"),
            1,
            Duration::from_secs(10),
            |e| {
                e["kind"] == "dropped"
                    && e["reason"] == reason
                    && e["client"].as_str().is_some_and(|c| c.ends_with(&port))
            },
        );
    }
    bed.inspector.stats_json()
}

/// The counters of a session whose reordered segments all went through
/// the fallback.
fn assert_diverted(what: &str, st: &serde_json::Value) {
    assert!(counter(st, "diverted") >= 2, "{what}: {st}");
    assert!(counter(st, "reassembled") >= 2, "{what}: {st}");
    assert_eq!(counter(st, "out_of_order_drops"), 0, "{what}: {st}");
}

#[test]
fn segments_reordered_on_purpose_are_inspected_in_order() {
    for (g, v6, sport) in [
        (Gateway::Xdp, false, 43031),
        (Gateway::Xdp, true, 43032),
        (Gateway::Tc, false, 43033),
        (Gateway::OneArmed, true, 43034),
    ] {
        let st = reordered_on_purpose(g, v6, sport, &[], &[], None);
        assert_diverted(&format!("{g:?}"), &st);
        assert_eq!(counter(&st, "fallback_drops"), 0, "{g:?}: {st}");
        assert_eq!(counter(&st, "dropped"), 0, "{g:?}: {st}");
    }
}

/// Past the fallback's limits the held segment is dropped (counted and
/// reported as an event of its flow, with the reason), not passed: past
/// the per-flow limit (one byte: nothing can be held), and held longer
/// than `--fallback-hold-ms` by a client that waits before filling the gap.
#[test]
fn a_segment_held_past_the_fallbacks_limits_is_dropped_then_retransmitted() {
    let st = reordered_on_purpose(
        Gateway::Xdp,
        false,
        43041,
        &["--fallback-flow-bytes", "1"],
        &[],
        Some("fallback-flow-limit"),
    );
    assert_diverted("flow limit", &st);
    assert_eq!(counter(&st, "fallback_drops"), 1, "flow limit: {st}");
    let st = reordered_on_purpose(
        Gateway::Tc,
        true,
        43042,
        &["--fallback-hold-ms", "100"],
        &["--pause-ms", "1000"],
        Some("fallback-timeout"),
    );
    assert_diverted("hold time", &st);
    assert_eq!(counter(&st, "fallback_drops"), 1, "hold time: {st}");
}

/// The fallback's daemon is killed (SIGKILL: the links stay pinned and go
/// on inspecting) while it holds the segment a client sent ahead: that
/// segment is lost with it, never passed; the kernel sees the heartbeat go
/// stale; a new `attach` takes over the pins, and once the client fills the
/// gap and retransmits, the verb is masked as ever.
#[test]
fn a_killed_daemon_loses_what_it_held_and_passes_nothing_uninspected() {
    for (g, sport) in [(Gateway::Xdp, 43061), (Gateway::Tc, 43062)] {
        let mut bed = Bed::new(g);
        let dir = inspector_tests::client::handshake_dir();
        let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
        let mut cmd = bed.attack_cmd(
            false,
            "reorder",
            sport,
            &[
                "--ready",
                ready.to_str().unwrap(),
                "--go",
                go.to_str().unwrap(),
            ],
        );
        let client = std::thread::spawn(move || run_timeout(&mut cmd, Duration::from_secs(90)));
        let pin_dir = bed.inspector.pin_dir().to_path_buf();
        let tb = bed.two.as_ref().expect("a two-interface gateway");
        let status = || status_json(&pin_dir);
        wait_until("the segment sent ahead", Duration::from_secs(30), || {
            ready.exists().then_some(())
        });
        wait_until("the fallback holding it", Duration::from_secs(10), || {
            (status()["fallback"]["held_segments"].as_u64() == Some(1)).then_some(())
        });
        let stopped = bed
            .inspector
            .stop_leaving_pin_dir(rustix::process::Signal::KILL.as_raw());
        assert!(stopped.pins_left);
        wait_until(
            "the kernel to see the daemon gone",
            Duration::from_secs(10),
            || (status()["fallback"]["state"] == "stale").then_some(()),
        );
        let before = bed.inspector.stats_json();
        bed.inspector = attach(&tb.gateway, &tb.gateway_ifaces(), g, &[], Some(&pin_dir));
        std::fs::write(&go, b"").unwrap();
        let out = client_output("reorder", client.join().expect("the client thread"));
        let what = format!("{g:?}");
        assert!(out["error"].is_null(), "{what}: {out}\n{}", bed.context());
        assert_eq!(
            commands(&bed),
            ["EHLO CLIENT.TEST\r\n", "NOOP\r\n", "XXXX X\r\n", "QUIT\r\n"],
            "{what}: client: {out}\n{}",
            bed.context()
        );
        let st = bed.inspector.stats_json();
        assert_eq!(counter(&before, "diverted"), 1, "{what}: {before}");
        assert_eq!(counter(&before, "reassembled"), 0, "{what}: {before}");
        // After the takeover: the gap filled and the retransmission both
        // went through the new daemon (the flow's half is still marked).
        assert_eq!(counter(&st, "diverted"), 3, "{what}: {st}");
        assert_eq!(counter(&st, "reassembled"), 2, "{what}: {st}");
    }
}

/// `--no-fallback`: the segment ahead is dropped as before the fallback
/// existed (`out_of_order_drops`), and the retransmission is masked.
#[test]
fn without_the_fallback_a_reordered_segment_is_dropped_then_retransmitted() {
    for (g, sport) in [(Gateway::Xdp, 43051), (Gateway::Tc, 43052)] {
        let st = reordered_on_purpose(g, false, sport, &["--no-fallback"], &[], None);
        assert_eq!(counter(&st, "diverted"), 0, "{g:?}: {st}");
        assert_eq!(counter(&st, "out_of_order_drops"), 1, "{g:?}: {st}");
    }
}

/// The second attack: with `--max-flows 1024`, a session says
/// EHLO, then the same client opens and closes up to 3,000 other real
/// sessions, then the first sends `VERB`. Nothing evicts the first flow's
/// entry (docs/contract.md §6): the others are refused once the client has
/// its maximum of flows (closed ones stay in the table until they expire),
/// and `VERB` reaches the server masked.
#[test]
fn a_crowded_flow_table_never_lets_verb_through_unmasked() {
    const OTHERS: usize = 3000;
    let tb = Testbed::new(Offloads::Default);
    let smtpd = RecordingSmtpd::start(&tb.server, &[SERVER_V4, SERVER_V6], 25);
    let inspector = Attach::new(&tb.gateway, &tb.gateway_ifaces())
        .arg("--max-flows")
        .arg("1024")
        .start()
        .unwrap_or_else(|f| panic!("inspector attach failed ({}):\n{}", f.status, f.stderr));
    let to = std::net::SocketAddr::new(SERVER_V4, 25);
    let (opened, outcome) = inspector_tests::netns::in_netns(&tb.client, move || {
        let step = Duration::from_secs(5);
        let mut first = Smtp::try_connect(to, step).expect("the first session");
        first
            .try_expect_raw(b"EHLO client.test\r\n", 250)
            .expect("EHLO");
        // A refused SYN is dropped: the connect times out. Stop trying
        // once refusals are all the client gets.
        let (mut opened, mut refused_in_a_row) = (0, 0);
        for _ in 0..OTHERS {
            match Smtp::try_connect(to, Duration::from_millis(300)) {
                Ok(mut s) => {
                    refused_in_a_row = 0;
                    opened += 1;
                    s.try_expect_raw(b"QUIT\r\n", 221).expect("QUIT");
                }
                Err(_) => refused_in_a_row += 1,
            }
            if refused_in_a_row == 20 {
                break;
            }
        }
        first.try_send(b"VERB\r\n").ok();
        (opened, first.try_reply().map_err(|e| format!("{e:#}")))
    });
    let st = inspector.stats_json();
    let lines = smtpd.command_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with(b"VERB")),
        "VERB reached the server unmasked; first session's reply: {outcome:?}\n{st}"
    );
    let reply = outcome.unwrap_or_else(|e| panic!("the first session was cut: {e}\n{st}"));
    assert!(reply.contains("XXXX"), "{reply}\n{st}");
    assert!(counter(&st, "flows_refused") >= 1, "{st}");
    assert!(opened >= 200, "only {opened} sessions opened\n{st}");
}

/// While an honest session is in progress, the client's side floods the
/// gateway with 20,000 SYNs from spoofed addresses, and another address
/// opens 300 real sessions and keeps them open. The honest session is not
/// pushed out (docs/contract.md §6): it completes, and its next disallowed
/// verb arrives masked; the greedy address is held to its cap.
#[test]
fn floods_of_spoofed_syns_and_real_sessions_do_not_push_out_an_honest_session() {
    let tb = Testbed::new(Offloads::Default);
    let smtpd = RecordingSmtpd::start(&tb.server, &[SERVER_V4, SERVER_V6], 25);
    let inspector = Attach::new(&tb.gateway, &tb.gateway_ifaces())
        .start()
        .unwrap_or_else(|f| panic!("inspector attach failed ({}):\n{}", f.status, f.stderr));
    tb.client
        .ip(&["addr", "add", "10.200.1.3/24", "dev", &tb.client_if]);
    let mut honest = Smtp::connect(&tb.client, SERVER_V4, 25);
    honest.expect("EHLO client.test", 250);
    let gw_mac = tb.gateway.link_json(&tb.gw_client_if)["address"]
        .as_str()
        .expect("the gateway's MAC")
        .to_string();
    // Spoofed SYNs: sources all over 10.99.0.0/16, sent at layer 2.
    let flood = format!(
        "import logging\n\
         logging.getLogger('scapy.runtime').setLevel(logging.ERROR)\n\
         from scapy.all import Ether, IP, TCP, get_if_hwaddr, sendp\n\
         iface = '{iface}'\n\
         mac = get_if_hwaddr(iface)\n\
         ps = [Ether(dst='{gw_mac}', src=mac) / IP(src='10.99.%d.%d' % (i // 250, i % 250 + 1), \
         dst='10.200.2.2') / TCP(sport=1024 + i % 60000, dport=25, flags='S', seq=i) \
         for i in range(20000)]\n\
         sendp(ps, iface=iface, verbose=False)\n",
        iface = tb.client_if,
    );
    run_ok(tb.client.exec("/usr/bin/python3").args(["-c", &flood]));
    // Real sessions from another address, kept open while the honest one
    // goes on; each waits at most 300 ms for its greeting.
    let greedy = "import socket\n\
         conns, greeted = [], 0\n\
         for i in range(300):\n\
         \x20   s = socket.socket()\n\
         \x20   s.bind(('10.200.1.3', 0))\n\
         \x20   s.settimeout(0.3)\n\
         \x20   try:\n\
         \x20       s.connect(('10.200.2.2', 25))\n\
         \x20       if s.recv(100).startswith(b'220'):\n\
         \x20           greeted += 1\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   conns.append(s)\n\
         print(greeted)\n";
    let out = run_ok(tb.client.exec("/usr/bin/python3").args(["-c", greedy]));
    let greeted: u64 = out.stdout_str().trim().parse().expect("a count");
    let st = inspector.stats_json();
    // The honest session goes on, inspected.
    honest.expect("NOOP", 250);
    honest.expect("VERB", 500);
    honest.expect("QUIT", 221);
    let lines = smtpd.command_lines();
    assert!(
        lines.iter().any(|l| l == b"XXXX\r\n")
            && !lines
                .iter()
                .any(|l| l.to_ascii_uppercase().starts_with(b"VERB")),
        "{lines:?}\n{st}"
    );
    assert_eq!(
        greeted,
        inspector_common::flow::DEFAULT_MAX_FLOWS_PER_CLIENT as u64,
        "sessions of the greedy address that got in\n{st}"
    );
    assert!(counter(&st, "flows_refused") >= 1, "{st}");
    assert!(counter(&st, "packets_seen") >= 20_000, "the flood: {st}");
}
