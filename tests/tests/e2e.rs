//! End to end: the test bed of `docs/testbed.md`, the inspector attached to both
//! gateway interfaces, a recording aiosmtpd server in the server namespace,
//! and swaks sending a real mail from the client namespace. Judged by what
//! the server received (commands byte for byte, SHA-256 of the body) and by
//! `inspector stats --json` read from a second process.
//!
//! Each case runs over IPv4 and IPv6, with veth offloads at their defaults
//! and all off. Needs root; run with `--test-threads=1`.

use std::{net::IpAddr, time::Duration};

use inspector_tests::{
    client::{self, Smtp, SWAKS_TIMEOUT},
    inspector::{counter, Attach},
    netns::{
        addr::{SERVER_V4, SERVER_V6},
        OneArmed,
    },
    proc::{run_timeout, Finished},
    sha256_hex, Counts, Inspector, NetNs, Offloads, RecordingSmtpd, Testbed,
};

const FROM: &str = "b@example.com";
const TO: &str = "a@example.com";

/// About 30 KiB of text, many segments' worth, with lines that start with a
/// dot (SMTP transparency: swaks doubles them, the server undoes it).
fn body_text() -> String {
    let mut lines = Vec::new();
    for i in 0..400 {
        match i % 50 {
            7 => lines.push(format!(".line {i:04} starts with a dot")),
            8 => lines.push(".".repeat(3)),
            _ => lines.push(format!(
                "line {i:04}: the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ"
            )),
        }
    }
    lines.join("\n")
}

fn trim_trailing_newlines(mut b: &[u8]) -> &[u8] {
    while let Some((last, rest)) = b.split_last() {
        if *last == b'\n' || *last == b'\r' {
            b = rest;
        } else {
            break;
        }
    }
    b
}

fn swaks(bed: &Testbed, server: IpAddr, body: &str) -> Finished {
    let mut c = client::swaks(&bed.client, server, FROM, TO);
    c.args(["--suppress-data", "--body", body]);
    run_timeout(&mut c, SWAKS_TIMEOUT)
}

/// XDP attach mode, as `inspector attach --mode` names it.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The default: native XDP (veth supports it).
    Native,
    /// `--mode xdp-skb`: generic XDP.
    Generic,
}

fn mail_through_the_gateway(offloads: Offloads, server: IpAddr, mode: Mode) {
    let bed = Testbed::new(offloads);
    bed.assert_reachable(server);
    let smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4, SERVER_V6], 25);
    let mut attach = Attach::new(&bed.gateway, &bed.gateway_ifaces());
    if let Mode::Generic = mode {
        attach = attach.arg("--mode").arg("xdp-skb");
    }
    let inspector = attach
        .start()
        .unwrap_or_else(|f| panic!("inspector attach failed ({}):\n{}", f.status, f.stderr));
    let before = inspector.stats();

    let body = body_text();
    let out = swaks(&bed, server, &body);
    assert!(
        out.status.success(),
        "swaks failed: {out}\n--- server stderr ---\n{}\n--- inspector stderr ---\n{}",
        smtpd.stderr(),
        inspector.stderr()
    );

    // The server got exactly the commands swaks sent...
    let commands: Vec<String> = smtpd
        .command_lines()
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert_eq!(
        commands,
        [
            "EHLO client.test\r\n".to_string(),
            format!("MAIL FROM:<{FROM}>\r\n"),
            format!("RCPT TO:<{TO}>\r\n"),
            "DATA\r\n".to_string(),
            "QUIT\r\n".to_string(),
        ]
    );

    // ...and the message body, byte for byte.
    let messages = smtpd.messages();
    assert_eq!(messages.len(), 1, "messages recorded: {messages:?}");
    let m = &messages[0];
    assert_eq!(m.mail_from, FROM);
    assert_eq!(m.rcpt_tos, [TO]);
    let sent = body.replace('\n', "\r\n");
    let received = trim_trailing_newlines(m.body());
    assert_eq!(
        sha256_hex(received),
        sha256_hex(sent.as_bytes()),
        "SHA-256 of the body: received {} bytes, sent {} bytes",
        received.len(),
        sent.len()
    );

    // Everything the session carried, both ways, as the server saw it.
    let closed = smtpd.wait_closed(1, Duration::from_secs(20));
    assert_eq!(closed.len(), 1);
    let client_bytes = closed[0].received.len() as u64;
    let server_bytes = closed[0].sent.len() as u64;
    let session_bytes = client_bytes + server_bytes;

    // The inspector saw the session, from a second process.
    let json = inspector.stats_json();
    let d = Counts::from_json(&json).since(&before);
    eprintln!(
        "{mode:?} XDP, {offloads:?} offloads, server {server}: {client_bytes} bytes to the server, \
         {server_bytes} back; {d:?}"
    );
    let ctx = format!("{d:?}\nstats --json: {json}");
    // A clean session loses nothing and is tracked from its SYN.
    assert_eq!(d.dropped, 0, "a clean session had frames dropped: {ctx}");
    assert_eq!(d.midstream, 0, "the flow's start was missed: {ctx}");
    assert_eq!(
        d.malformed, 0,
        "well-formed traffic counted as malformed: {ctx}"
    );
    assert_eq!(d.fragments, 0, "{ctx}");
    assert_eq!(d.flows_created, 1, "one SMTP session: {ctx}");
    assert!(
        d.packets_inspected >= 12,
        "packets_inspected {} for a whole SMTP session: {ctx}",
        d.packets_inspected
    );
    assert!(d.packets_seen >= d.packets_inspected, "{ctx}");
    // Every payload byte crosses the gateway once (XDP sees ingress only):
    // at least the session's bytes (more only if TCP retransmitted), and
    // far from twice as many.
    assert!(
        d.bytes_inspected >= session_bytes,
        "bytes_inspected {} < the session's {session_bytes} bytes (body {}): {ctx}",
        d.bytes_inspected,
        sent.len()
    );
    assert!(
        d.bytes_inspected < 2 * session_bytes,
        "bytes_inspected {} counts the session's {session_bytes} bytes twice: {ctx}",
        d.bytes_inspected
    );

    let stopped = inspector.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(!stopped.pins_left, "pin dir left behind");
    for (ns, i) in bed.veths() {
        assert_eq!(ns.xdp_prog_id(i), None, "XDP still on {i} after SIGINT");
    }
}

#[test]
fn ipv4_default_offloads() {
    mail_through_the_gateway(Offloads::Default, SERVER_V4, Mode::Native);
}

#[test]
fn ipv4_offloads_off() {
    mail_through_the_gateway(Offloads::Off, SERVER_V4, Mode::Native);
}

#[test]
fn ipv6_default_offloads() {
    mail_through_the_gateway(Offloads::Default, SERVER_V6, Mode::Native);
}

#[test]
fn ipv6_offloads_off() {
    mail_through_the_gateway(Offloads::Off, SERVER_V6, Mode::Native);
}

/// Generic XDP (`--mode xdp-skb`) with offloads on: the program sees the
/// client's GSO super-packets (up to 64 KiB, one frame for many segments),
/// which it parses in buffer-sized chunks: nothing may be dropped.
#[test]
fn ipv4_generic_xdp_default_offloads() {
    mail_through_the_gateway(Offloads::Default, SERVER_V4, Mode::Generic);
}

#[test]
fn ipv6_generic_xdp_default_offloads() {
    mail_through_the_gateway(Offloads::Default, SERVER_V6, Mode::Generic);
}

#[test]
fn ipv4_generic_xdp_offloads_off() {
    mail_through_the_gateway(Offloads::Off, SERVER_V4, Mode::Generic);
}

/// `inspector attach --mode MODE` on `ifaces` of `ns`; panics with its
/// output if it fails.
fn attach_in(ns: &NetNs, ifaces: &[&str], mode: &str) -> Inspector {
    Attach::new(ns, ifaces)
        .arg("--mode")
        .arg(mode)
        .start()
        .unwrap_or_else(|f| {
            panic!(
                "inspector attach --mode {mode} failed ({}):\n{}",
                f.status, f.stderr
            )
        })
}

/// The one-armed gateway of `docs/testbed.md` (router on a stick): both
/// directions of a session cross the gateway's one interface, so an
/// inspector attached there alone tracks the flow from its SYN and inspects
/// every payload byte of both directions once, in either mode. In TC mode
/// every packet also leaves by the interface it came in on, through the
/// egress hook, which must let it go: a second look took the server's
/// packets, sent again from the gateway's MAC, for forgeries, and no
/// session got past its SYN-ACK.
#[test]
fn one_armed_gateway_carries_both_directions_on_one_interface() {
    for (mode, server) in [
        ("xdp", SERVER_V4),
        ("xdp", SERVER_V6),
        ("tc", SERVER_V4),
        ("tc", SERVER_V6),
    ] {
        let bed = OneArmed::new(Offloads::Default);
        bed.assert_reachable(server);
        let smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4, SERVER_V6], 25);
        let inspector = attach_in(&bed.gateway, &bed.gateway_ifaces(), mode);
        let before = inspector.stats();
        let before_json = inspector.stats_json();

        let mut c = client::swaks(&bed.client, server, FROM, TO);
        c.args(["--suppress-data", "--body", "one arm\n"]);
        let out = run_timeout(&mut c, SWAKS_TIMEOUT);
        assert!(
            out.status.success(),
            "--mode {mode}: swaks to {server} failed: {out}"
        );
        assert_eq!(
            smtpd.messages().len(),
            1,
            "--mode {mode}, {server}: no message arrived"
        );

        let closed = smtpd.wait_closed(1, Duration::from_secs(20));
        let session_bytes = (closed[0].received.len() + closed[0].sent.len()) as u64;
        let d = inspector.stats().since(&before);
        let ctx = format!("--mode {mode}, server {server}: {d:?}");
        assert_eq!(d.flows_created, 1, "{ctx}");
        assert_eq!(d.midstream, 0, "{ctx}");
        assert_eq!(d.dropped, 0, "{ctx}");
        let after_json = inspector.stats_json();
        for name in ["spoofed", "retrans_reinspected", "retrans_acked"] {
            let n = counter(&after_json, name) - counter(&before_json, name);
            assert_eq!(n, 0, "{name}: {ctx}");
        }
        // Each direction is inspected once, as it enters the one
        // interface: the client's bytes on their way in, the server's on
        // theirs (in TC mode, not again on their way out).
        assert!(
            d.bytes_inspected >= session_bytes && d.bytes_inspected < 2 * session_bytes,
            "bytes_inspected {} for a session of {session_bytes} bytes: {ctx}",
            d.bytes_inspected
        );
    }
}

/// An MTA host that runs the inspector itself, `--mode tc` on its own
/// interface (README: Deploy): the commands arrive on ingress, the replies
/// leave on egress through `inspector_tc_eg`, which inspects what the host
/// sends. The flow exists only if the egress program saw the SYN-ACK, and
/// the body passes only once it has read the 354 (a body segment before
/// its reply is dropped as awaiting it): the message arriving is the proof
/// that the egress program inspects, the masked STARTTLS that the ingress
/// one does.
#[test]
fn an_mta_host_in_tc_mode_reads_its_replies_on_egress() {
    for server in [SERVER_V4, SERVER_V6] {
        let bed = Testbed::new(Offloads::Default);
        let smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4, SERVER_V6], 25);
        let inspector = attach_in(&bed.server, &[bed.server_if.as_str()], "tc");
        let before = inspector.stats_json();

        let mut c = Smtp::connect(&bed.client, server, 25);
        c.expect("EHLO client.test", 250);
        c.expect("STARTTLS", 500);
        c.expect(&format!("MAIL FROM:<{FROM}>"), 250);
        c.expect(&format!("RCPT TO:<{TO}>"), 250);
        c.expect("DATA", 354);
        c.try_expect_raw(b"Subject: the MTA host\r\n\r\nbody\r\n.\r\n", 250)
            .unwrap_or_else(|e| panic!("{server}: the body: {e:#}"));
        c.expect("QUIT", 221);

        let ctx = format!("server {server}");
        assert_eq!(smtpd.messages().len(), 1, "{ctx}: no message arrived");
        let commands: Vec<String> = smtpd
            .command_lines()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert_eq!(
            commands,
            [
                "EHLO client.test\r\n".to_string(),
                "XXXXXXXX\r\n".to_string(),
                format!("MAIL FROM:<{FROM}>\r\n"),
                format!("RCPT TO:<{TO}>\r\n"),
                "DATA\r\n".to_string(),
                "QUIT\r\n".to_string(),
            ],
            "{ctx}"
        );
        let after = inspector.stats_json();
        let d = |name: &str| counter(&after, name) - counter(&before, name);
        for (name, want) in [
            ("flows_created", 1),
            ("commands_masked", 1),
            ("bodies", 1),
            ("dropped", 0),
            ("spoofed", 0),
            ("awaiting_reply_drops", 0),
        ] {
            assert_eq!(d(name), want, "{name}: {ctx}: {after}");
        }
    }
}

/// The MTA host as a client, `--mode tc` on its own interface: its
/// commands leave on egress. A masked BDAT resets the flow (its segment
/// becomes a RST to the server); the client's next segment is answered
/// with a RST of its own, which must reach the client's socket: the
/// egress program turns it back into this host's ingress (as the ingress
/// program turns one back out of the interface it came in on). Sent out
/// of the interface instead, it went to the wire addressed to this host,
/// and the client waited for a reply until its timeout.
#[test]
fn an_mta_host_in_tc_mode_resets_its_own_client_at_once() {
    for server in [SERVER_V4, SERVER_V6] {
        let bed = Testbed::new(Offloads::Default);
        let _smtpd = RecordingSmtpd::start(&bed.server, &[SERVER_V4, SERVER_V6], 25);
        let inspector = attach_in(&bed.client, &[bed.client_if.as_str()], "tc");
        let before = inspector.stats_json();

        let mut c = Smtp::connect(&bed.client, server, 25);
        c.expect("EHLO client.test", 250);
        c.expect(&format!("MAIL FROM:<{FROM}>"), 250);
        c.expect(&format!("RCPT TO:<{TO}>"), 250);
        // Masked, and the flow reset: no reply comes.
        c.send(b"BDAT 5 LAST\r\n");
        c.send(b"NOOP\r\n");
        let e = c
            .try_reply()
            .expect_err("a reply on a flow the inspector reset");
        let kind = e
            .chain()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .map(|e| e.kind());
        assert_eq!(
            kind,
            Some(std::io::ErrorKind::ConnectionReset),
            "server {server}: the client was not reset: {e:#}"
        );
        let after = inspector.stats_json();
        let d = |name: &str| counter(&after, name) - counter(&before, name);
        assert_eq!(d("bdat_resets"), 1, "server {server}: {after}");
        assert_eq!(d("spoofed"), 0, "server {server}: {after}");
    }
}
