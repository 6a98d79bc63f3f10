//! The real embedded XDP program under BPF_PROG_TEST_RUN, on hand-built
//! frames: header parsing (Ethernet, VLAN, IPv4 options, IPv6 extension
//! headers, TCP options), truncated and lying headers, padding, fragments.
//!
//! The program is loaded in monitor mode for the parsing tests, so every
//! frame must come out with XDP_PASS, byte for byte as it went in, and the
//! counters must change by exactly what that frame should produce. The
//! program tracks flows: a payload segment is inspected (`packets_inspected`,
//! `bytes_inspected`) only in a flow whose SYN it saw; a lone payload
//! segment of an inspected port is counted `midstream`. Either proves that
//! parsing reached the payload, with the right length.
//!
//! Needs root (loads an eBPF program); run with `--test-threads=1`.

use std::sync::atomic::{AtomicU16, Ordering};

use inspector_common::config::{CFG_FRAGMENTS_PASS, CFG_MONITOR};
use inspector_tests::{
    frame::{
        Ext, Frame, Ipv4, Ipv6, Tcp, Udp, ETH_P_8021AD, ETH_P_8021Q, L4, TCP_ACK, TCP_FIN,
        TCP_OPTS_12, TCP_OPTS_40, TCP_SYN,
    },
    kernel::{self, Hook, Loaded, Session, Verdict},
    proc::{cmd, run},
    smtpd::PYTHON,
    xdp::{expect, LoadedXdp, MIN_TEST_RUN_LEN, XDP_DROP, XDP_PASS},
    Counts,
};

const EHLO: &[u8] = b"EHLO client.test\r\n";
const REPLY: &[u8] = b"250-server.test\r\n250 8BITMIME\r\n";

/// Sequence numbers of the first payload byte of each side, after the
/// handshake (`Tcp::new` defaults: seq 1_000_000, ack 2_000_000).
const CLIENT_SEQ: u32 = 1_000_000;
const SERVER_SEQ: u32 = 2_000_000;

/// A client port not used before in this process: every flow of a test has
/// its own, so flows never interfere.
fn client_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(40000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How a test wraps a TCP segment into a frame: `(segment, from the server)`.
type Shape<'a> = &'a dyn Fn(Tcp, bool) -> Frame;

fn v4(t: Tcp, reply: bool) -> Frame {
    let ip = Ipv4::tcp(t);
    Frame::ipv4(if reply { ip.reply() } else { ip })
}

fn v6(t: Tcp, reply: bool) -> Frame {
    let ip = Ipv6::tcp(t);
    Frame::ipv6(if reply { ip.reply() } else { ip })
}

fn client_seg(port: u16, server_port: u16, payload: &[u8]) -> Tcp {
    Tcp::new(port, server_port)
        .seq(CLIENT_SEQ)
        .ack(SERVER_SEQ)
        .payload(payload)
}

fn server_seg(port: u16, server_port: u16, payload: &[u8]) -> Tcp {
    Tcp::new(server_port, port)
        .seq(SERVER_SEQ)
        .ack(CLIENT_SEQ)
        .payload(payload)
}

/// Client SYN, server SYN-ACK and the client's ACK in `shape`: the ACK that
/// completes the handshake makes the flow's entry. Returns the client port.
fn open_flow(xdp: &LoadedXdp, what: &str, shape: Shape, server_port: u16) -> u16 {
    let port = client_port();
    let [syn, synack, ack] = handshake(shape, port, server_port);
    assert_eq!(xdp.run(&syn), expect::ignored(), "{what}: SYN");
    assert_eq!(xdp.run(&synack), expect::ignored(), "{what}: SYN-ACK");
    assert_eq!(xdp.run(&ack), expect::flow_created(), "{what}: ACK");
    port
}

/// The three frames of a handshake between `port` and `server_port`.
fn handshake(shape: Shape, port: u16, server_port: u16) -> [Vec<u8>; 3] {
    let synack = Tcp::new(server_port, port)
        .flags(TCP_SYN | TCP_ACK)
        .seq(SERVER_SEQ - 1)
        .ack(CLIENT_SEQ);
    [
        shape(Tcp::syn(port, server_port), false).bytes(),
        shape(synack, true).bytes(),
        shape(Tcp::new(port, server_port).flags(TCP_ACK), false).bytes(),
    ]
}

/// Checks that frames of `shape` are parsed to the payload: a lone segment
/// counts as mid-stream, and in a flow, a command and a reply are inspected
/// with their exact payload lengths.
fn check_shape(xdp: &LoadedXdp, what: &str, shape: Shape) {
    let lone = shape(client_seg(client_port(), 25, EHLO), false).bytes();
    assert_eq!(xdp.run(&lone), expect::midstream(), "{what}: lone segment");

    let port = open_flow(xdp, what, shape, 25);
    let cmd = shape(client_seg(port, 25, EHLO), false).bytes();
    assert_eq!(
        xdp.run(&cmd),
        expect::inspected(EHLO.len()),
        "{what}: command in a flow"
    );
    let reply = shape(server_seg(port, 25, REPLY), true).bytes();
    assert_eq!(
        xdp.run(&reply),
        expect::inspected(REPLY.len()),
        "{what}: reply in a flow"
    );
}

/// Runs every `(name, frame, expected)` and reports all mismatches at once.
fn check_all(xdp: &LoadedXdp, cases: &[(&str, Vec<u8>, Counts)]) {
    let mut failures = Vec::new();
    for (name, frame, want) in cases {
        let got = xdp.run(frame);
        if got != *want {
            failures.push(format!(
                "{name}: expected {want:?}\n{:>width$}got      {got:?}",
                "",
                width = name.len() + 2
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "counter mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn plain_ipv4_and_ipv6_sessions_are_inspected() {
    let xdp = LoadedXdp::monitor();
    check_shape(&xdp, "IPv4", &v4);
    check_shape(&xdp, "IPv6", &v6);
    check_shape(&xdp, "IPv4 to 587", &|t: Tcp, r| {
        // The same flow on port 587 instead of 25.
        let swap = |p: u16| if p == 25 { 587 } else { p };
        let t = Tcp {
            src_port: swap(t.src_port),
            dst_port: swap(t.dst_port),
            ..t
        };
        v4(t, r)
    });
}

#[test]
fn a_1400_byte_segment_counts_its_whole_payload() {
    let xdp = LoadedXdp::monitor();
    let port = open_flow(&xdp, "IPv4", &v4, 25);
    let seg = v4(client_seg(port, 25, &[b'x'; 1400]), false).bytes();
    assert_eq!(xdp.run(&seg), expect::inspected(1400));
}

#[test]
fn segments_without_payload_are_not_inspected() {
    let xdp = LoadedXdp::monitor();
    check_all(
        &xdp,
        &[
            (
                "lone ACK to 25",
                v4(Tcp::new(client_port(), 25).flags(TCP_ACK), false).bytes(),
                expect::ignored(),
            ),
            (
                "lone FIN+ACK from 587",
                v4(Tcp::new(587, client_port()).flags(TCP_FIN | TCP_ACK), true).bytes(),
                expect::ignored(),
            ),
            (
                "a lone SYN to 25 (a flow starts when its handshake completes)",
                v4(Tcp::syn(client_port(), 25), false).bytes(),
                expect::ignored(),
            ),
        ],
    );
    open_flow(&xdp, "a handshake with 25", &v4, 25);
    let port = client_port();
    for (i, frame) in handshake(&v4, port, 80).iter().enumerate() {
        assert_eq!(xdp.run(frame), expect::ignored(), "handshake with 80, #{i}");
    }
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let xdp = LoadedXdp::monitor();
    check_shape(&xdp, "IPv6 hop-by-hop + destination options", &|t, r| {
        Frame::ipv6({
            let ip = Ipv6::tcp(t).ext(Ext::hop_by_hop()).ext(Ext::dest_opts(1));
            if r {
                ip.reply()
            } else {
                ip
            }
        })
    });
    check_shape(
        &xdp,
        "IPv6 hop-by-hop + routing + destination options (24 bytes) + AH",
        &|t, r| {
            Frame::ipv6({
                let ip = Ipv6::tcp(t)
                    .ext(Ext::hop_by_hop())
                    .ext(Ext::routing())
                    .ext(Ext::dest_opts(3))
                    .ext(Ext::auth());
                if r {
                    ip.reply()
                } else {
                    ip
                }
            })
        },
    );
}

#[test]
fn vlan_tags_are_looked_through() {
    let xdp = LoadedXdp::monitor();
    check_shape(&xdp, "IPv4, one 802.1Q tag", &|t, r| {
        v4(t, r).vlan(ETH_P_8021Q, 10)
    });
    check_shape(&xdp, "IPv4, 802.1ad + 802.1Q (QinQ)", &|t, r| {
        v4(t, r).vlan(ETH_P_8021AD, 100).vlan(ETH_P_8021Q, 10)
    });
    check_shape(&xdp, "IPv6, one 802.1ad tag", &|t, r| {
        v6(t, r).vlan(ETH_P_8021AD, 10)
    });
    check_shape(&xdp, "IPv6 with extension headers, QinQ", &|t, r| {
        Frame::ipv6({
            let ip = Ipv6::tcp(t).ext(Ext::hop_by_hop()).ext(Ext::dest_opts(1));
            if r {
                ip.reply()
            } else {
                ip
            }
        })
        .vlan(ETH_P_8021AD, 100)
        .vlan(ETH_P_8021Q, 10)
    });
    // Only two tags are looked through (documented limit).
    let three = v4(client_seg(client_port(), 25, EHLO), false)
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2)
        .vlan(ETH_P_8021Q, 3)
        .bytes();
    assert_eq!(xdp.run(&three), expect::ignored(), "three tags");
}

#[test]
fn tcp_and_ipv4_options_are_skipped() {
    let xdp = LoadedXdp::monitor();
    check_shape(&xdp, "IPv4, doff 8", &|t, r| v4(t.options(&TCP_OPTS_12), r));
    check_shape(&xdp, "IPv4, doff 15", &|t, r| {
        v4(t.options(&TCP_OPTS_40), r)
    });
    check_shape(&xdp, "IPv6, doff 15", &|t, r| {
        v6(t.options(&TCP_OPTS_40), r)
    });
    check_shape(
        &xdp,
        "IPv4 IHL 15 (40 bytes of options), doff 15",
        &|t, r| {
            let ip = Ipv4::tcp(t.options(&TCP_OPTS_40)).options(&[1; 40]);
            Frame::ipv4(if r { ip.reply() } else { ip })
        },
    );
    check_shape(&xdp, "IPv4 IHL 6 (router alert)", &|t, r| {
        let ip = Ipv4::tcp(t).options(&[148, 4, 0, 0]);
        Frame::ipv4(if r { ip.reply() } else { ip })
    });
}

#[test]
fn other_traffic_is_seen_but_not_inspected() {
    let xdp = LoadedXdp::monitor();
    check_all(
        &xdp,
        &[
            (
                "TCP to port 80",
                v4(
                    Tcp::new(client_port(), 80).payload(b"GET / HTTP/1.0\r\n"),
                    false,
                )
                .bytes(),
                expect::ignored(),
            ),
            (
                "TCP from port 80 over IPv6",
                v6(
                    Tcp::new(80, client_port()).payload(b"HTTP/1.0 200\r\n"),
                    true,
                )
                .bytes(),
                expect::ignored(),
            ),
            (
                "TCP to port 465 (implicit TLS)",
                v4(Tcp::new(client_port(), 465).payload(b"\x16\x03\x01"), false).bytes(),
                expect::ignored(),
            ),
            (
                "UDP to port 25",
                Frame::ipv4(Ipv4::udp(Udp::new(40000, 25, EHLO))).bytes(),
                expect::ignored(),
            ),
            (
                "UDP to port 25 over IPv6",
                Frame::ipv6(Ipv6::udp(Udp::new(40000, 25, EHLO))).bytes(),
                expect::ignored(),
            ),
            ("ARP request", Frame::arp().bytes(), expect::ignored()),
            (
                "ICMPv6 echo",
                Frame::ipv6(Ipv6::new(L4::Raw(58, vec![128, 0, 0, 0, 0, 1, 0, 1]))).bytes(),
                expect::ignored(),
            ),
        ],
    );
}

#[test]
fn the_port_set_decides_what_is_inspected() {
    let xdp = LoadedXdp::load_with(&[2525], CFG_MONITOR);
    check_all(
        &xdp,
        &[
            (
                "port 25 when only 2525 is set",
                v4(client_seg(client_port(), 25, EHLO), false).bytes(),
                expect::ignored(),
            ),
            (
                "port 2525",
                v4(client_seg(client_port(), 2525, EHLO), false).bytes(),
                expect::midstream(),
            ),
        ],
    );
    open_flow(&xdp, "a handshake with 2525", &v4, 2525);
}

fn fragment_frames() -> Vec<(&'static str, Vec<u8>, bool)> {
    // (name, frame, holds the TCP ports of an inspected flow)
    vec![
        (
            "IPv4 first fragment (MF set)",
            Frame::ipv4(Ipv4::tcp(client_seg(39000, 25, &[b'a'; 64])).fragment(true, 0)).bytes(),
            true,
        ),
        (
            "IPv4 middle fragment (MF set, offset 8)",
            Frame::ipv4(Ipv4::new(L4::Raw(6, vec![b'a'; 64])).fragment(true, 8)).bytes(),
            false,
        ),
        (
            "IPv4 last fragment (offset 8, MF clear)",
            Frame::ipv4(Ipv4::new(L4::Raw(6, vec![b'a'; 40])).fragment(false, 8)).bytes(),
            false,
        ),
        (
            "IPv6 first fragment",
            Frame::ipv6(
                Ipv6::tcp(client_seg(39000, 25, &[b'a'; 64])).ext(Ext::fragment(0, true, 99)),
            )
            .bytes(),
            true,
        ),
        (
            "IPv6 first fragment after hop-by-hop",
            Frame::ipv6(
                Ipv6::tcp(client_seg(39000, 25, &[b'a'; 64]))
                    .ext(Ext::hop_by_hop())
                    .ext(Ext::fragment(0, true, 99)),
            )
            .bytes(),
            true,
        ),
        (
            "IPv6 last fragment",
            Frame::ipv6(Ipv6::new(L4::Raw(6, vec![b'a'; 40])).ext(Ext::fragment(8, false, 99)))
                .bytes(),
            false,
        ),
        (
            "IPv4 first fragment to port 80",
            Frame::ipv4(Ipv4::tcp(client_seg(39000, 80, &[b'a'; 64])).fragment(true, 0)).bytes(),
            false,
        ),
    ]
}

#[test]
fn ip_fragments_are_counted_as_fragments() {
    let xdp = LoadedXdp::monitor();
    let mut cases: Vec<(&str, Vec<u8>, Counts)> = fragment_frames()
        .into_iter()
        .map(|(n, f, _)| (n, f, expect::fragment()))
        .collect();
    cases.push((
        "IPv4 with DF only is not a fragment",
        v4(client_seg(client_port(), 25, EHLO), false).bytes(),
        expect::midstream(),
    ));
    check_all(&xdp, &cases);
}

#[test]
fn first_fragments_of_inspected_flows_are_dropped_unless_allowed() {
    // Enforcing, defaults: a first fragment that holds the ports of an
    // inspected flow is dropped (the datagram cannot be reassembled without
    // it); other fragments pass unchanged.
    let xdp = LoadedXdp::enforcing();
    for (name, frame, inspected) in fragment_frames() {
        let r = xdp.try_run(&frame).expect("test run");
        if inspected {
            assert_eq!(r.return_value, XDP_DROP, "{name}");
            assert_eq!(
                r.delta,
                Counts {
                    dropped: 1,
                    ..expect::fragment()
                },
                "{name}"
            );
        } else {
            assert_eq!(r.return_value, XDP_PASS, "{name}");
            assert_eq!(r.data_out, frame, "{name}: frame changed");
            assert_eq!(r.delta, expect::fragment(), "{name}");
        }
    }
    // `attach --fragments pass`: every fragment passes.
    let xdp = LoadedXdp::load_with(&[25, 587], CFG_FRAGMENTS_PASS);
    for (name, frame, _) in fragment_frames() {
        assert_eq!(xdp.run(&frame), expect::fragment(), "{name}");
    }
}

#[test]
fn lying_headers_are_malformed() {
    let xdp = LoadedXdp::monitor();
    let quit = b"QUIT\r\n";
    let smtp4 = || Ipv4::tcp(client_seg(client_port(), 25, quit));
    let smtp6 = || Ipv6::tcp(client_seg(client_port(), 25, quit));
    check_all(
        &xdp,
        &[
            (
                "IPv4 IHL 15 on a 46-byte packet",
                Frame::ipv4(smtp4().lie_ihl(15)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 IHL 15 and total length 86 on a 46-byte packet",
                Frame::ipv4(smtp4().lie_ihl(15).lie_total_len(86)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 IHL 4",
                Frame::ipv4(smtp4().lie_ihl(4)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 IHL 0",
                Frame::ipv4(smtp4().lie_ihl(0)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 total length 1500 on a 46-byte packet",
                Frame::ipv4(smtp4().lie_total_len(1500)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 total length 47 on a 46-byte packet",
                Frame::ipv4(smtp4().lie_total_len(47)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 total length 19 (less than the header)",
                Frame::ipv4(smtp4().lie_total_len(19)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv4 total length 30 (TCP header cut)",
                Frame::ipv4(smtp4().lie_total_len(30)).bytes(),
                expect::malformed(),
            ),
            (
                "TCP doff 15 beyond the IP length",
                Frame::ipv4(Ipv4::tcp(client_seg(client_port(), 25, quit).lie_doff(15))).bytes(),
                expect::malformed(),
            ),
            (
                "TCP doff 4",
                Frame::ipv4(Ipv4::tcp(client_seg(client_port(), 25, quit).lie_doff(4))).bytes(),
                expect::malformed(),
            ),
            (
                "TCP doff 0",
                Frame::ipv4(Ipv4::tcp(client_seg(client_port(), 25, quit).lie_doff(0))).bytes(),
                expect::malformed(),
            ),
            (
                "IPv6 TCP doff 15 beyond the payload length",
                Frame::ipv6(Ipv6::tcp(client_seg(client_port(), 25, quit).lie_doff(15))).bytes(),
                expect::malformed(),
            ),
            (
                "version 6 in an IPv4 frame",
                Frame::ipv4(smtp4().lie_version(6)).bytes(),
                expect::malformed(),
            ),
            (
                "version 4 in an IPv6 frame",
                Frame::ipv6(smtp6().lie_version(4)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv6 payload length 1000 on a 26-byte payload",
                Frame::ipv6(smtp6().lie_payload_len(1000)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv6 payload length 10 (TCP header cut)",
                Frame::ipv6(smtp6().lie_payload_len(10)).bytes(),
                expect::malformed(),
            ),
            (
                "IPv6 destination options claiming 1608 bytes",
                Frame::ipv6(smtp6().ext(Ext::dest_opts(1).lie_len(200))).bytes(),
                expect::malformed(),
            ),
            (
                "IPv6 AH claiming more than the payload",
                Frame::ipv6(smtp6().ext(Ext::auth().lie_len(100))).bytes(),
                expect::malformed(),
            ),
        ],
    );
}

#[test]
fn ethernet_padding_is_not_payload() {
    let xdp = LoadedXdp::monitor();
    for (what, tagged) in [("untagged", false), ("one tag", true)] {
        let shape = move |t: Tcp, r: bool| {
            let f = v4(t, r);
            if tagged {
                f.vlan(ETH_P_8021Q, 7)
            } else {
                f
            }
        };
        let port = open_flow(&xdp, what, &shape, 25);
        let tag = if tagged { 4 } else { 0 };
        // A 40-byte IP packet (no payload) padded to the Ethernet minimum:
        // if the padding counted, it would be a 6-byte payload.
        let empty = shape(client_seg(port, 25, b"").flags(TCP_ACK), false);
        assert_eq!(empty.bytes().len(), 54 + tag);
        assert_eq!(
            xdp.run(&empty.pad_to(64).bytes()),
            expect::ignored(),
            "{what}: 40-byte IP packet padded"
        );
        // A 43-byte IP packet padded: 3 bytes of payload, not 6 or more.
        let three = shape(client_seg(port, 25, b".\r\n"), false);
        assert_eq!(three.bytes().len(), 57 + tag);
        assert_eq!(
            xdp.run(&three.pad_to(64).bytes()),
            expect::inspected(3),
            "{what}: 43-byte IP packet padded"
        );
    }
}

/// Every prefix of a frame, from empty to whole. Below 14 bytes the kernel
/// refuses the test run itself; from 14 bytes on, every cut frame passes
/// unchanged and counts as malformed; the whole frame counts as `full`.
fn check_every_truncation(xdp: &LoadedXdp, name: &str, frame: &[u8], full: Counts) {
    for len in 0..=frame.len() {
        let cut = &frame[..len];
        if len < MIN_TEST_RUN_LEN {
            let before = xdp.counts();
            assert!(
                xdp.try_run(cut).is_err(),
                "{name}: the kernel ran the program on a {len}-byte frame"
            );
            assert_eq!(
                xdp.counts(),
                before,
                "{name}: counters changed for a refused {len}-byte run"
            );
            continue;
        }
        let got = xdp.run(cut);
        let want = if len == frame.len() {
            full
        } else {
            expect::malformed()
        };
        assert_eq!(got, want, "{name} cut to {len} of {} bytes", frame.len());
    }
}

#[test]
fn truncated_tcp_frames_are_malformed_at_every_length() {
    let xdp = LoadedXdp::monitor();
    let cases: Vec<(&str, Vec<u8>, Counts)> = vec![
        (
            "IPv4 EHLO",
            v4(client_seg(client_port(), 25, EHLO), false).bytes(),
            expect::midstream(),
        ),
        (
            "IPv4 IHL 15, doff 15",
            Frame::ipv4(
                Ipv4::tcp(client_seg(client_port(), 25, EHLO).options(&TCP_OPTS_40))
                    .options(&[1; 40]),
            )
            .bytes(),
            expect::midstream(),
        ),
        (
            "IPv6 hop-by-hop, routing, dest-opts, AH",
            Frame::ipv6(
                Ipv6::tcp(client_seg(client_port(), 25, EHLO))
                    .ext(Ext::hop_by_hop())
                    .ext(Ext::routing())
                    .ext(Ext::dest_opts(2))
                    .ext(Ext::auth()),
            )
            .bytes(),
            expect::midstream(),
        ),
        (
            "IPv4 QinQ",
            v4(client_seg(client_port(), 25, EHLO), false)
                .vlan(ETH_P_8021AD, 100)
                .vlan(ETH_P_8021Q, 10)
                .bytes(),
            expect::midstream(),
        ),
        (
            "IPv6 802.1Q reply, doff 8",
            v6(
                server_seg(client_port(), 25, REPLY).options(&TCP_OPTS_12),
                true,
            )
            .vlan(ETH_P_8021Q, 10)
            .bytes(),
            expect::midstream(),
        ),
        (
            "IPv4 TCP to port 80",
            v4(client_seg(client_port(), 80, EHLO), false).bytes(),
            expect::ignored(),
        ),
    ];
    for (name, frame, full) in &cases {
        check_every_truncation(&xdp, name, frame, *full);
    }
}

#[test]
fn truncated_other_frames_pass_unchanged() {
    // Non-TCP frames and fragments: whatever the cut, the frame passes
    // unchanged, is seen once and is never inspected.
    let xdp = LoadedXdp::monitor();
    let frames = [
        Frame::ipv4(Ipv4::udp(Udp::new(40000, 25, EHLO))).bytes(),
        Frame::ipv6(Ipv6::udp(Udp::new(40000, 25, EHLO)).ext(Ext::hop_by_hop())).bytes(),
        Frame::arp().vlan(ETH_P_8021Q, 5).bytes(),
        Frame::ipv4(Ipv4::tcp(client_seg(39000, 25, &[b'a'; 64])).fragment(true, 0)).bytes(),
        Frame::ipv6(Ipv6::tcp(client_seg(39000, 25, &[b'a'; 64])).ext(Ext::fragment(0, true, 1)))
            .bytes(),
    ];
    for frame in &frames {
        for len in MIN_TEST_RUN_LEN..=frame.len() {
            let got = xdp.run(&frame[..len]);
            assert_eq!(got.packets_seen, 1, "cut to {len}: {got:?}");
            assert_eq!(got.packets_inspected, 0, "cut to {len}: {got:?}");
            assert_eq!(got.bytes_inspected, 0, "cut to {len}: {got:?}");
        }
    }
}

/// A frame longer than the linear part BPF_PROG_TEST_RUN gives an XDP
/// program (3520 bytes; the rest goes into fragments, as on a multi-buffer
/// interface). It passes unchanged (monitor mode), is counted with its whole
/// IP-declared payload, and all of it is parsed: every command line is
/// counted, and the disallowed verb on the last line, which lies in a
/// fragment, is counted as masked. A program that only read the linear
/// part would count fewer commands and no masked verb.
#[test]
fn frames_in_several_buffers_pass_unchanged() {
    let xdp = LoadedXdp::monitor();
    let prog = Loaded::new(Hook::Xdp, CFG_MONITOR);
    for payload_len in [4000usize, 5000, 8000, 20000] {
        // Pipelined NOOPs, then (after leading spaces that make up the
        // length) a VERB line at the very end.
        let noops = (payload_len - 6) / 6;
        let mut payload = b"NOOP\r\n".repeat(noops);
        payload.resize(payload_len - 6, b' ');
        payload.extend_from_slice(b"VERB\r\n");

        let port = open_flow(&xdp, "IPv4", &v4, 25);
        let frame = v4(client_seg(port, 25, &payload), false).bytes();
        assert!(
            frame.len() > 3520,
            "{} bytes fit in one buffer",
            frame.len()
        );
        assert_eq!(
            xdp.run(&frame),
            expect::inspected(payload_len),
            "{}-byte frame",
            frame.len()
        );

        for (name, shape) in [("IPv4", kernel::v4()), ("IPv6", kernel::v6())] {
            let mut s = Session::new(&prog, shape, kernel::client_port(), 25);
            s.open();
            let frame = s.client_frame(&payload);
            let what = format!("{name}, {}-byte frame", frame.len());
            let o = s.run_client_frame(&frame, payload_len);
            assert_eq!(o.verdict, Verdict::Pass, "{what}: {:?}", o.delta.nonzero());
            assert!(o.data_out == frame, "{what}: changed in monitor mode");
            assert_eq!(o.get("bytes_inspected"), payload_len as u64, "{what}");
            assert_eq!(
                o.get("commands_seen"),
                noops as u64 + 1,
                "{what}: {:?}",
                o.delta.nonzero()
            );
            assert_eq!(o.get("commands_masked"), 1, "{what}");
            assert_eq!(o.verbs.masked("VERB"), 1, "{what}: {:?}", o.verbs);
            assert_eq!(o.get("malformed"), 0, "{what}");
        }
    }
}

#[test]
fn counters_add_up_over_many_frames() {
    let xdp = LoadedXdp::monitor();
    let before = xdp.counts();
    let frames = [
        (
            v4(client_seg(client_port(), 25, EHLO), false).bytes(),
            expect::midstream(),
        ),
        (
            v6(server_seg(client_port(), 25, REPLY), true).bytes(),
            expect::midstream(),
        ),
        (Frame::arp().bytes(), expect::ignored()),
        (
            Frame::ipv4(Ipv4::tcp(client_seg(client_port(), 25, EHLO)).lie_ihl(3)).bytes(),
            expect::malformed(),
        ),
        (
            Frame::ipv4(Ipv4::tcp(client_seg(client_port(), 25, EHLO)).fragment(true, 0)).bytes(),
            expect::fragment(),
        ),
    ];
    let mut want = Counts::default();
    for _ in 0..10 {
        for (f, d) in &frames {
            xdp.run(f);
            want = want.plus(d);
        }
    }
    assert_eq!(xdp.counts().since(&before), want);
}

/// The frame builder's checksums, checked by someone else: scapy recomputes
/// every IPv4, TCP and UDP checksum of frames like those the tests use.
#[test]
fn built_frames_have_checksums_scapy_agrees_with() {
    let frames = [
        v4(client_seg(39000, 25, EHLO), false).bytes(),
        v4(client_seg(39000, 25, b".\r\n"), false).bytes(), // odd length
        Frame::ipv4(Ipv4::tcp(client_seg(39000, 25, EHLO).options(&TCP_OPTS_40)).options(&[1; 40]))
            .bytes(),
        v4(server_seg(39000, 25, REPLY), true)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 10)
            .bytes(),
        Frame::ipv4(Ipv4::udp(Udp::new(40000, 25, b"odd"))).bytes(),
        v6(client_seg(39000, 25, EHLO), false).bytes(),
        Frame::ipv6(
            Ipv6::tcp(client_seg(39000, 25, b"DATA\r\n").options(&TCP_OPTS_12))
                .ext(Ext::hop_by_hop())
                .ext(Ext::routing())
                .ext(Ext::dest_opts(2)),
        )
        .vlan(ETH_P_8021Q, 3)
        .bytes(),
        Frame::ipv6(Ipv6::udp(Udp::new(40000, 25, b"odd"))).bytes(),
    ];
    let script = r#"
import logging, sys
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.all import Ether, IP, TCP, UDP
bad = 0
for h in sys.argv[1:]:
    p = Ether(bytes.fromhex(h))
    checked = 0
    for layer in (IP, TCP, UDP):
        if layer in p:
            q = p.copy()
            del q[layer].chksum
            want = Ether(bytes(q))[layer].chksum
            got = p[layer].chksum
            checked += 1
            if got != want:
                bad += 1
                print("MISMATCH", layer.__name__, hex(got), hex(want), p.summary())
    print("checked", checked, p.summary())
sys.exit(1 if bad else 0)
"#;
    let hex: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut c = cmd(PYTHON, &["-c", script]);
    c.args(&hex);
    let out = run(&mut c);
    out.assert_success();
    let lines: Vec<String> = out.stdout_str().lines().map(String::from).collect();
    assert_eq!(lines.len(), frames.len(), "{out}");
    for l in &lines {
        assert!(
            !l.starts_with("checked 0 "),
            "scapy found no checksum to check: {l}"
        );
    }
}
