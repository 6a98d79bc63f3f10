//! docs/contract.md §9 in the kernel: a packet of the server's direction is
//! believed only from the server's side; one the client forges changes no
//! flow state, is dropped and counted `spoofed`.
//!
//! The program runs with BPF_PROG_TEST_RUN on frames that arrive on an
//! interface of a test namespace set up as a gateway: `gwc` towards the
//! client, `gws` towards the server, forwarding on, the client's and the
//! server's MACs in the neighbour table. The client forges server packets
//! from `gwc` (what a two-interface gateway sees) or from `gws` with its own
//! MAC (what a one-armed gateway, whose one interface faces both, sees).
//! Every case runs with XDP and TC, over IPv4 and IPv6.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use inspector_common::verbs::DEFAULT_ALLOWED;
use inspector_tests::{
    frame::{Frame, Ipv4, Ipv6, Tcp, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    kernel::{Hook, Loaded, OnOneCpu, Outcome, Verdict, CLIENT_ISN, SERVER_ISN},
    netns::in_netns,
    NetNs,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 2, 0, 0, 0, 0, 2);

/// The gateway namespace and its two interfaces' indexes.
struct Bed {
    ns: NetNs,
    gwc: u32,
    gws: u32,
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The gateway (see the module doc); `forwarding` off makes it a host that
/// only serves and sends its own mail.
fn bed(forwarding: bool) -> Bed {
    let ns = NetNs::new("spoofk");
    for (gw, peer, a4, a6, n4, n6, mac) in [
        (
            "gwc",
            "pc",
            "10.200.1.1/24",
            "fd00:200:1::1/64",
            CLIENT_V4.to_string(),
            CLIENT_V6.to_string(),
            CLIENT_MAC,
        ),
        (
            "gws",
            "ps",
            "10.200.2.1/24",
            "fd00:200:2::1/64",
            SERVER_V4.to_string(),
            SERVER_V6.to_string(),
            SERVER_MAC,
        ),
    ] {
        ns.ip(&["link", "add", gw, "type", "veth", "peer", "name", peer]);
        ns.ip(&["link", "set", peer, "up"]);
        ns.ip(&["link", "set", gw, "up"]);
        ns.ip(&["addr", "add", a4, "dev", gw]);
        ns.ip(&["-6", "addr", "add", a6, "dev", gw, "nodad"]);
        let mac = mac_text(mac);
        for n in [&n4, &n6] {
            ns.ip(&[
                "neigh",
                "replace",
                n,
                "lladdr",
                &mac,
                "dev",
                gw,
                "nud",
                "permanent",
            ]);
        }
    }
    let f = if forwarding { "1" } else { "0" };
    ns.sysctl("net.ipv4.conf.all.forwarding", f);
    ns.sysctl("net.ipv6.conf.all.forwarding", f);
    let index = |i: &str| ns.link_json(i)["ifindex"].as_u64().expect("an ifindex") as u32;
    let (gwc, gws) = (index("gwc"), index("gws"));
    Bed { ns, gwc, gws }
}

/// A frame of `t` between `client` and `server` (`reply`: server to
/// client), sent by `src_mac`.
fn frame(t: Tcp, client: IpAddr, server: IpAddr, reply: bool, src_mac: [u8; 6]) -> Vec<u8> {
    let (src, dst) = if reply {
        (server, client)
    } else {
        (client, server)
    };
    let mut f = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4::tcp(t);
            ip.src = s.octets();
            ip.dst = d.octets();
            Frame::ipv4(ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6::tcp(t);
            ip.src = s.octets();
            ip.dst = d.octets();
            Frame::ipv6(ip)
        }
        _ => panic!("one family per frame"),
    };
    f.src_mac = src_mac;
    f.bytes()
}

/// One TCP connection through the gateway, numbered as a real client and
/// server would number it; honest frames arrive from their own side.
struct Conn<'a> {
    prog: &'a Loaded,
    bed: (u32, u32),
    client: IpAddr,
    server: IpAddr,
    cport: u16,
    sport: u16,
    cseq: u32,
    sseq: u32,
}

impl<'a> Conn<'a> {
    fn new(prog: &'a Loaded, bed: (u32, u32), v6: bool, cport: u16) -> Conn<'a> {
        let (client, server) = if v6 {
            (IpAddr::V6(CLIENT_V6), IpAddr::V6(SERVER_V6))
        } else {
            (IpAddr::V4(CLIENT_V4), IpAddr::V4(SERVER_V4))
        };
        Conn {
            prog,
            bed,
            client,
            server,
            cport,
            sport: 25,
            cseq: CLIENT_ISN.wrapping_add(1),
            sseq: SERVER_ISN.wrapping_add(1),
        }
    }

    fn client_seg(&self) -> Tcp {
        Tcp::new(self.cport, self.sport)
            .seq(self.cseq)
            .ack(self.sseq)
    }

    fn server_seg(&self) -> Tcp {
        Tcp::new(self.sport, self.cport)
            .seq(self.sseq)
            .ack(self.cseq)
    }

    /// A client frame, from the client's side.
    fn client_frame(&self, t: Tcp) -> Vec<u8> {
        frame(t, self.client, self.server, false, CLIENT_MAC)
    }

    /// A server-direction frame with the MAC `mac`.
    fn server_frame(&self, t: Tcp, mac: [u8; 6]) -> Vec<u8> {
        frame(t, self.client, self.server, true, mac)
    }

    fn run_client(&self, t: Tcp) -> Outcome {
        self.prog.run_on(&self.client_frame(t), self.bed.0)
    }

    /// An honest server segment: from `gws` with the server's MAC.
    fn run_server(&self, t: Tcp) -> Outcome {
        self.prog
            .run_on(&self.server_frame(t, SERVER_MAC), self.bed.1)
    }

    /// SYN, SYN-ACK and ACK, each from its own side; each must pass.
    fn handshake(&mut self) {
        let o = self.run_client(
            Tcp::new(self.cport, self.sport)
                .flags(TCP_SYN)
                .seq(CLIENT_ISN)
                .ack(0),
        );
        assert_eq!(o.verdict, Verdict::Pass, "SYN");
        self.synack();
    }

    fn synack(&mut self) {
        let o = self.run_server(
            Tcp::new(self.sport, self.cport)
                .flags(TCP_SYN | TCP_ACK)
                .seq(SERVER_ISN)
                .ack(self.cseq),
        );
        assert_believed(&o, "SYN-ACK");
        let o = self.run_client(self.client_seg().flags(TCP_ACK));
        assert_eq!(o.verdict, Verdict::Pass, "ACK");
    }

    /// Client payload, in order; advances if it passed.
    fn client(&mut self, payload: &[u8]) -> Outcome {
        let o = self.run_client(self.client_seg().payload(payload));
        if o.verdict == Verdict::Pass {
            self.cseq = self.cseq.wrapping_add(payload.len() as u32);
        }
        o
    }

    /// The server's payload, honestly sent; must pass unchanged.
    fn server(&mut self, payload: &[u8]) {
        let o = self.run_server(self.server_seg().payload(payload));
        assert_believed(
            &o,
            &format!("the server's {:?}", String::from_utf8_lossy(payload)),
        );
        self.sseq = self.sseq.wrapping_add(payload.len() as u32);
    }

    /// The client's forgery of the server's segment `t`, sent from the
    /// client's interface (`one_armed` false) or from the server's
    /// interface with the client's MAC (`one_armed`): it must be dropped as
    /// spoofed, changing nothing.
    fn forge(&self, what: &str, t: Tcp, one_armed: bool) {
        let f = self.server_frame(t, CLIENT_MAC);
        let on = if one_armed { self.bed.1 } else { self.bed.0 };
        let o = self.prog.run_on(&f, on);
        assert_refused(&o, &format!("{what} (one-armed: {one_armed})"));
        assert_eq!(o.get("dropped"), 1, "{what}");
    }
}

/// Payload of an outcome's frame (IPv4 or IPv6, no options).
fn payload_of(o: &Outcome, len: usize) -> Vec<u8> {
    o.data_out[o.data_out.len() - len..].to_vec()
}

/// A `354` that claims the gateway's own server-side address (never behind
/// an interface) for `c`'s client, sent by `mac`.
fn from_the_gateway(c: &Conn, v6: bool, mac: [u8; 6]) -> Vec<u8> {
    let gw = if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 2, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 200, 2, 1))
    };
    frame(
        Tcp::new(25, c.cport).payload(b"354 go ahead\r\n"),
        c.client,
        gw,
        true,
        mac,
    )
}

/// `o` is a server-direction packet believed: passed, not counted
/// `spoofed`.
fn assert_believed(o: &Outcome, what: &str) {
    assert_eq!(o.verdict, Verdict::Pass, "{what}: {:?}", o.delta.nonzero());
    assert_eq!(o.get("spoofed"), 0, "{what}: {:?}", o.delta.nonzero());
}

/// `o` is a packet refused as forged: dropped, and counted `spoofed`.
fn assert_refused(o: &Outcome, what: &str) {
    assert_eq!(o.verdict, Verdict::Drop, "{what}: {:?}", o.delta.nonzero());
    assert_eq!(o.get("spoofed"), 1, "{what}: {:?}", o.delta.nonzero());
}

/// Runs `case` for XDP and TC, IPv4 and IPv6, and one-armed or not, in a
/// fresh gateway namespace each time.
fn each(case: fn(&Loaded, (u32, u32), bool, bool, u16)) {
    each_with(None, case)
}

/// [`each`], with the reassembly fallback's daemon announced live on a tap
/// of index `fallback` (if any).
fn each_with(fallback: Option<u32>, case: fn(&Loaded, (u32, u32), bool, bool, u16)) {
    let mut port = 42000;
    for hook in [Hook::Xdp, Hook::Tc] {
        for v6 in [false, true] {
            for one_armed in [false, true] {
                let b = bed(true);
                let ifs = (b.gwc, b.gws);
                port += 1;
                let p = port;
                in_netns(&b.ns, move || {
                    let mut prog = Loaded::new(hook, 0);
                    if let Some(tap) = fallback {
                        prog.announce_fallback(tap, 0);
                    }
                    case(&prog, ifs, v6, one_armed, p);
                });
            }
        }
    }
}

#[test]
fn honest_sessions_through_the_gateway_are_inspected() {
    each(|prog, ifs, v6, _, port| {
        let mut c = Conn::new(prog, ifs, v6, port);
        c.handshake();
        c.server(b"220 server.test ESMTP\r\n");
        let o = c.client(b"EHLO client.test\r\n");
        assert_eq!(o.verdict, Verdict::Pass);
        c.server(b"250 server.test\r\n");
        let o = c.client(b"VERB\r\n");
        assert_eq!(payload_of(&o, 6), b"XXXX\r\n", "VERB masked");
    });
}

/// The attack: `DATA` that dies at the gateway, a forged `354`,
/// then `VERB`. The inspector waits for the server's real reply instead.
#[test]
fn a_forged_354_changes_nothing_and_verb_stays_masked() {
    each(|prog, ifs, v6, one_armed, port| {
        let mut c = Conn::new(prog, ifs, v6, port);
        c.handshake();
        c.server(b"220 server.test ESMTP\r\n");
        c.client(b"EHLO client.test\r\n");
        c.server(b"250 server.test\r\n");
        let o = c.client(b"DATA\r\n");
        assert_eq!(o.verdict, Verdict::Pass, "DATA");
        c.forge(
            "forged 354",
            c.server_seg().payload(b"354 go ahead\r\n"),
            one_armed,
        );
        // The server never got DATA in the attack; it answers the client's
        // real DATA (no recipients yet) with a refusal.
        c.server(b"503 5.5.1 Error: need RCPT command\r\n");
        let o = c.client(b"VERB\r\n");
        assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.delta.nonzero());
        assert_eq!(payload_of(&o, 6), b"XXXX\r\n", "VERB after the forged 354");
    });
}

/// With the reassembly fallback live, the server's out-of-order segments
/// go to its tap (docs/contract.md §5), but a forged one is refused before
/// that, out of order or in order while the direction's segments are with
/// the fallback: only what passed this check is ever written back, and
/// written-back segments are the ones not checked again.
#[test]
fn a_forged_reply_is_refused_before_the_fallback_sees_it() {
    // No such interface in the test namespace: nothing arrives "from the
    // tap" here.
    each_with(Some(999), |prog, ifs, v6, one_armed, port| {
        let mut c = Conn::new(prog, ifs, v6, port);
        c.handshake();
        c.server(b"220 server.test ESMTP\r\n");
        c.client(b"EHLO client.test\r\n");
        let ahead = |c: &Conn| c.server_seg().seq(c.sseq.wrapping_add(100));
        c.forge(
            "forged reply out of order",
            ahead(&c).payload(b"250 ok\r\n"),
            one_armed,
        );
        // The fallback is live: the server's own reply out of order is
        // diverted, and the direction now belongs to the fallback.
        let o = c.run_server(ahead(&c).payload(b"250 ok\r\n"));
        let want = match prog.hook() {
            Hook::Xdp => Verdict::Redirect,
            Hook::Tc => Verdict::Bounce,
        };
        assert_eq!(o.verdict, want, "{:?}", o.delta.nonzero());
        assert_eq!(o.get("diverted"), 1);
        c.forge(
            "forged reply in order, while the fallback holds replies",
            c.server_seg().payload(b"250-STARTTLS\r\n"),
            one_armed,
        );
    });
}

/// A forged SYN-ACK before the real one must not set the server's sequence
/// space: the real server's segments stay in order afterwards.
#[test]
fn a_forged_syn_ack_does_not_set_the_servers_sequence_space() {
    each(|prog, ifs, v6, one_armed, port| {
        let mut c = Conn::new(prog, ifs, v6, port);
        let o = c.run_client(
            Tcp::new(c.cport, c.sport)
                .flags(TCP_SYN)
                .seq(CLIENT_ISN)
                .ack(0),
        );
        assert_eq!(o.verdict, Verdict::Pass, "SYN");
        c.forge(
            "forged SYN-ACK",
            Tcp::new(c.sport, c.cport)
                .flags(TCP_SYN | TCP_ACK)
                .seq(0x1234_5678)
                .ack(c.cseq),
            one_armed,
        );
        c.synack();
        // Were the forged SYN-ACK believed, this would be out of order.
        c.server(b"220 server.test ESMTP\r\n");
        c.client(b"EHLO client.test\r\n");
        c.server(b"250 server.test\r\n");
        let o = c.client(b"VERB\r\n");
        assert_eq!(payload_of(&o, 6), b"XXXX\r\n");
    });
}

/// A forged acknowledgement of bytes the server never got (they died at
/// the gateway) must not let different bytes at the same place pass
/// unread as "already acknowledged".
#[test]
fn a_forged_ack_does_not_let_a_rewritten_retransmission_pass_unread() {
    each(|prog, ifs, v6, one_armed, port| {
        let mut c = Conn::new(prog, ifs, v6, port);
        c.handshake();
        c.server(b"220 server.test ESMTP\r\n");
        c.client(b"EHLO client.test\r\n");
        c.server(b"250 server.test\r\n");
        let at = c.cseq;
        let o = c.client(b"NOOP\r\n");
        assert_eq!(o.verdict, Verdict::Pass);
        c.forge(
            "forged ACK",
            c.server_seg().flags(TCP_ACK).ack(c.cseq),
            one_armed,
        );
        let o = c.run_client(c.client_seg().seq(at).payload(b"VERB\r\n"));
        assert!(
            o.verdict == Verdict::Drop || payload_of(&o, 6) == b"XXXX\r\n",
            "VERB in place of NOOP passed unmasked: {:?}",
            o.delta.nonzero()
        );
    });
}

/// With no neighbour entry for the server the side cannot be told: refused
/// (the gateway resolves the server when it forwards the client's SYN).
#[test]
fn a_server_without_a_neighbour_entry_is_not_believed() {
    let b = bed(true);
    let ifs = (b.gwc, b.gws);
    b.ns.ip(&["neigh", "del", &SERVER_V4.to_string(), "dev", "gws"]);
    in_netns(&b.ns, move || {
        for hook in [Hook::Xdp, Hook::Tc] {
            let prog = Loaded::new(hook, 0);
            let mut c = Conn::new(&prog, ifs, false, 42100);
            let o = c.run_client(
                Tcp::new(c.cport, c.sport)
                    .flags(TCP_SYN)
                    .seq(CLIENT_ISN)
                    .ack(0),
            );
            assert_eq!(o.verdict, Verdict::Pass, "SYN");
            let o = c.run_server(
                Tcp::new(c.sport, c.cport)
                    .flags(TCP_SYN | TCP_ACK)
                    .seq(SERVER_ISN)
                    .ack(c.cseq),
            );
            assert_refused(&o, &format!("{hook:?}"));
            c.cseq = CLIENT_ISN.wrapping_add(1);
        }
    });
}

/// On a host that does not forward (the MTA host), a server-direction
/// packet that comes in is believed only as a reply on one of the host's
/// own connections: one claiming the host's own server is forged.
#[test]
fn on_a_host_that_does_not_forward_only_replies_to_its_own_connections_pass() {
    let b = bed(false);
    let ifs = (b.gwc, b.gws);
    in_netns(&b.ns, move || {
        // A connection of this host: its client end is 10.200.1.1:cport.
        let listener = TcpListener::bind("10.200.1.1:0").expect("listen");
        let lport = listener.local_addr().unwrap().port();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let cport = stream.local_addr().unwrap().port();
        let local = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 1));
        for hook in [Hook::Xdp, Hook::Tc] {
            let prog = Loaded::with_policy(hook, &[lport, 25], 0, DEFAULT_ALLOWED);
            // The reply on the host's own connection.
            let reply = frame(
                Tcp::new(lport, cport).flags(TCP_ACK).seq(1).ack(1),
                local,
                local,
                true,
                CLIENT_MAC,
            );
            let o = prog.run_on(&reply, ifs.0);
            assert_believed(&o, &format!("{hook:?}"));
            // A reply to a connection this host does not have, and a
            // "server" on this host answering a remote client.
            for (what, t, client, server) in [
                (
                    "a reply to no connection of this host",
                    Tcp::new(25, 1),
                    local,
                    IpAddr::V4(SERVER_V4),
                ),
                (
                    "the host's own server",
                    Tcp::new(25, cport),
                    IpAddr::V4(CLIENT_V4),
                    local,
                ),
            ] {
                let f = frame(
                    t.flags(TCP_ACK).seq(1).ack(1),
                    client,
                    server,
                    true,
                    CLIENT_MAC,
                );
                let o = prog.run_on(&f, ifs.0);
                assert_refused(&o, &format!("{hook:?} {what}"));
            }
        }
        drop(stream);
    });
}

/// The next things an attacker tries from the client's side: a forged
/// server FIN or RST (to close the flow, then reopen it from a fresh
/// state), a forged reply sent with the gateway's own MAC, and a forged
/// reply claiming the gateway's own address. None is believed; the flow
/// stays live and inspected.
#[test]
fn forged_closes_and_other_disguises_are_not_believed() {
    each(|prog, ifs, v6, one_armed, port| {
        let mut c = Conn::new(prog, ifs, v6, port);
        c.handshake();
        c.server(b"220 server.test ESMTP\r\n");
        c.forge(
            "forged RST",
            c.server_seg().flags(TCP_RST | TCP_ACK),
            one_armed,
        );
        c.forge(
            "forged FIN",
            c.server_seg().flags(TCP_FIN | TCP_ACK),
            one_armed,
        );
        // A SYN for the same addresses and ports, as if the flow had closed.
        let o = c.run_client(
            Tcp::new(c.cport, c.sport)
                .flags(TCP_SYN)
                .seq(0x0bad_0000)
                .ack(0),
        );
        assert_eq!(o.get("flows_created"), 0, "{:?}", o.delta.nonzero());
        // With the gateway's own MAC (the frame claims it was sent by the
        // gateway): still the client's interface or a wrong next hop.
        let gw_mac = [0x02, 0, 0, 0, 0xee, 0x01];
        let f = c.server_frame(c.server_seg().payload(b"354 go ahead\r\n"), gw_mac);
        let on = if one_armed { c.bed.1 } else { c.bed.0 };
        let o = prog.run_on(&f, on);
        assert_refused(&o, "with the gateway's MAC");
        // Claiming the gateway's own address: a local address is never
        // behind an interface.
        let f = from_the_gateway(&c, v6, CLIENT_MAC);
        let o = prog.run_on(&f, on);
        assert_refused(&o, "claiming the gateway's address");
        // The flow is still live and inspected.
        c.client(b"EHLO client.test\r\n");
        c.server(b"250 server.test\r\n");
        let o = c.client(b"VERB\r\n");
        assert_eq!(payload_of(&o, 6), b"XXXX\r\n");
    });
}

/// Points `server` at next-hop MAC `mac` in namespace `ns` (by name: the
/// test runs inside it, on another thread).
fn next_hop(ns: &str, server: IpAddr, mac: [u8; 6]) {
    let st = std::process::Command::new("ip")
        .args(["-n", ns, "neigh", "replace", &server.to_string()])
        .args(["lladdr", &mac_text(mac), "dev", "gws", "nud", "permanent"])
        .status()
        .expect("running ip");
    assert!(st.success(), "ip neigh replace: {st}");
}

/// A check that passed is believed again for a second without its lookups
/// (side.rs, docs/contract.md §9), per CPU and only for the same claimed
/// sender, interface and MAC. Here the server's next hop moves to another
/// MAC (a router fail-over): the old MAC's packets are believed until the
/// second since their check is over, not longer; the new MAC's are believed
/// at once, since nothing cached them, and their check replaces the old
/// one; and at no time does the cache believe another address through the
/// believed interface and MAC.
#[test]
fn a_next_hop_change_applies_within_a_second_and_the_cache_believes_nothing_else() {
    let b = bed(true);
    let ifs = (b.gwc, b.gws);
    let ns = b.ns.name().to_string();
    in_netns(&b.ns, move || {
        // The cache is this CPU's: keep every run on one.
        let _cpu = OnOneCpu::new();
        let new_mac = [0x02, 0, 0, 0, 0x02, 0x99];
        let runs = [Hook::Xdp, Hook::Tc]
            .into_iter()
            .flat_map(|h| [(h, false), (h, true)]);
        for (i, (hook, v6)) in runs.enumerate() {
            let prog = Loaded::new(hook, 0);
            let mut c = Conn::new(&prog, ifs, v6, 42200 + i as u16);
            let what = format!("{hook:?}, IPv6 {v6}");
            // No earlier than the SYN-ACK's check, which the cache keeps.
            let checked = Instant::now();
            c.handshake();
            c.server(b"220 server.test ESMTP\r\n");
            // Another address through the interface and MAC just believed:
            // the gateway's own, which is never behind an interface.
            let f = from_the_gateway(&c, v6, SERVER_MAC);
            let o = prog.run_on(&f, c.bed.1);
            assert_refused(&o, &format!("{what}: another address"));

            next_hop(&ns, c.server, new_mac);
            let moved = Instant::now();
            // The old next hop: believed from the cache while the second
            // since its check lasts, then refused.
            let refused = loop {
                let before = Instant::now();
                let o = c.run_server(c.server_seg().flags(TCP_ACK));
                if o.verdict == Verdict::Drop {
                    assert_refused(&o, &format!("{what}: the old next hop"));
                    break before;
                }
                assert_eq!(o.get("spoofed"), 0);
                assert!(
                    moved.elapsed() < Duration::from_secs(3),
                    "{what}: the old next hop is still believed {:?} after the change",
                    moved.elapsed()
                );
                std::thread::yield_now();
            };
            // Refused no earlier than the cached second (less the coarse
            // clock's tick): until then the cache, not the lookups, decided.
            assert!(
                refused.duration_since(checked) >= Duration::from_millis(900),
                "{what}: refused {:?} after the check, within its second",
                refused.duration_since(checked)
            );
            // The new next hop: checked in full, believed; its check
            // replaces the old one's in the cache.
            let o = prog.run_on(
                &c.server_frame(c.server_seg().flags(TCP_ACK), new_mac),
                c.bed.1,
            );
            assert_believed(&o, &format!("{what}: the new next hop"));
            let o = c.run_server(c.server_seg().flags(TCP_ACK));
            assert_refused(&o, &format!("{what}: the old MAC after the new one"));
            next_hop(&ns, c.server, SERVER_MAC);
        }
    });
}
