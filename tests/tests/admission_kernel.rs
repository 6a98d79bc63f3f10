//! docs/contract.md §6, flow-table pressure, in the kernel: an entry is
//! made only when a handshake completes (the client's ACK of the SYN-ACK),
//! SYNs that never complete only churn the handshake map, a full table
//! refuses new flows instead of evicting, and one client address cannot
//! hold more than its cap. XDP under BPF_PROG_TEST_RUN (frames from the
//! loopback device, which the side check trusts).

use std::net::Ipv4Addr;

use inspector_common::{flow::HANDSHAKE_ENTRIES, verbs::DEFAULT_ALLOWED};
use inspector_tests::{
    frame::{Frame, Ipv4, Tcp, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    kernel::{v4, Hook, Loaded, Outcome, Session, Verdict, CLIENT_ISN, SERVER_ISN},
};

/// A frame between `client` (port `cport`) and the usual server on 25.
fn frame(client: Ipv4Addr, t: Tcp, reply: bool) -> Vec<u8> {
    let mut ip = Ipv4::tcp(t);
    ip.src = client.octets();
    Frame::ipv4(if reply { ip.reply() } else { ip }).bytes()
}

/// SYN, SYN-ACK and ACK of `client:cport`; returns the ACK's outcome.
fn handshake(prog: &Loaded, client: Ipv4Addr, cport: u16) -> Outcome {
    let o = prog.run(&frame(
        client,
        Tcp::new(cport, 25).flags(TCP_SYN).seq(CLIENT_ISN).ack(0),
        false,
    ));
    if o.verdict != Verdict::Pass {
        return o;
    }
    prog.run(&frame(
        client,
        Tcp::new(25, cport)
            .flags(TCP_SYN | TCP_ACK)
            .seq(SERVER_ISN)
            .ack(CLIENT_ISN.wrapping_add(1)),
        true,
    ));
    prog.run(&frame(
        client,
        Tcp::new(cport, 25)
            .flags(TCP_ACK)
            .seq(CLIENT_ISN.wrapping_add(1))
            .ack(SERVER_ISN.wrapping_add(1)),
        false,
    ))
}

fn tcp_flags(frame: &[u8]) -> u8 {
    // Ethernet 14 + IPv4 20 (no options) + flags at 13.
    frame[14 + 20 + 13]
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_the_old_ones() {
    let prog = Loaded::with_table(Hook::Xdp, &[25], 0, DEFAULT_ALLOWED, Some(4), 0);
    let mut first = Session::new(&prog, v4(), 45000, 25);
    first.open();
    for p in 45001..45004 {
        let o = handshake(&prog, Ipv4Addr::new(10, 200, 1, 2), p);
        assert_eq!(
            o.get("flows_created"),
            1,
            "flow {p}: {:?}",
            o.delta.nonzero()
        );
    }
    // The fifth: its handshake's last ACK becomes a RST to the server.
    let o = handshake(&prog, Ipv4Addr::new(10, 200, 1, 2), 45004);
    assert_eq!(o.get("flows_refused"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("flows_created"), 0);
    assert_eq!(o.verdict, Verdict::Pass, "rewritten, not dropped");
    assert_eq!(
        tcp_flags(&o.data_out) & TCP_RST,
        TCP_RST,
        "the refused ACK leaves as a RST"
    );
    // Nothing was evicted: the first flow is still inspected.
    first.client(b"EHLO client.test\r\n");
    first.server(b"250 server.test\r\n");
    let o = first.client(b"VERB\r\n");
    assert!(o.data_out.ends_with(b"XXXX\r\n"), "{:?}", o.delta.nonzero());
}

#[test]
fn syns_that_never_complete_do_not_fill_the_table() {
    let prog = Loaded::with_table(Hook::Xdp, &[25], 0, DEFAULT_ALLOWED, Some(4), 0);
    // More spoofed SYNs than the handshake map holds, from many addresses.
    for i in 0..HANDSHAKE_ENTRIES + 1000 {
        let client = Ipv4Addr::from(0x0a64_0000 + i);
        let f = frame(
            client,
            Tcp::new(40000, 25).flags(TCP_SYN).seq(i).ack(0),
            false,
        );
        let r = prog
            .test_run(Hook::Xdp.program(), &f, 1)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.return_value, inspector_tests::kernel::XDP_PASS);
    }
    assert_eq!(prog.counters().get("flows_created"), 0);
    // Every honest flow still finds room.
    for p in 45100..45104 {
        let o = handshake(&prog, Ipv4Addr::new(10, 200, 1, 2), p);
        assert_eq!(
            o.get("flows_created"),
            1,
            "flow {p}: {:?}",
            o.delta.nonzero()
        );
    }
}

#[test]
fn one_client_address_cannot_take_more_than_its_cap() {
    let prog = Loaded::with_table(Hook::Xdp, &[25], 0, DEFAULT_ALLOWED, None, 2);
    let greedy = Ipv4Addr::new(10, 200, 1, 7);
    for p in 45200..45202 {
        let o = handshake(&prog, greedy, p);
        assert_eq!(
            o.get("flows_created"),
            1,
            "flow {p}: {:?}",
            o.delta.nonzero()
        );
    }
    // The third SYN of that address is dropped.
    let o = handshake(&prog, greedy, 45202);
    assert_eq!(o.verdict, Verdict::Drop, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("flows_refused"), 1);
    // Another address is not affected.
    let o = handshake(&prog, Ipv4Addr::new(10, 200, 1, 8), 45203);
    assert_eq!(o.get("flows_created"), 1, "{:?}", o.delta.nonzero());
    // A closed flow waits for expiry in the table, but no longer counts.
    let o = prog.run(&frame(
        greedy,
        Tcp::new(45200, 25)
            .flags(TCP_FIN | TCP_ACK)
            .seq(CLIENT_ISN.wrapping_add(1))
            .ack(SERVER_ISN.wrapping_add(1)),
        false,
    ));
    assert_eq!(o.get("flows_closed"), 1, "{:?}", o.delta.nonzero());
    let o = handshake(&prog, greedy, 45204);
    assert_eq!(o.get("flows_created"), 1, "{:?}", o.delta.nonzero());
}

/// A SYN-ACK that does not answer the recorded SYN, or an ACK that does not
/// acknowledge the SYN-ACK, makes no entry.
#[test]
fn only_a_matching_handshake_makes_an_entry() {
    let prog = Loaded::with_policy(Hook::Xdp, &[25], 0, DEFAULT_ALLOWED);
    let c = Ipv4Addr::new(10, 200, 1, 9);
    prog.run(&frame(
        c,
        Tcp::new(45300, 25).flags(TCP_SYN).seq(CLIENT_ISN).ack(0),
        false,
    ));
    prog.run(&frame(
        c,
        Tcp::new(25, 45300)
            .flags(TCP_SYN | TCP_ACK)
            .seq(SERVER_ISN)
            .ack(CLIENT_ISN.wrapping_add(1)),
        true,
    ));
    let o = prog.run(&frame(
        c,
        Tcp::new(45300, 25)
            .flags(TCP_ACK)
            .seq(CLIENT_ISN.wrapping_add(1))
            .ack(SERVER_ISN.wrapping_add(7)),
        false,
    ));
    assert_eq!(o.get("flows_created"), 0, "an ACK of something else");
    let o = prog.run(&frame(
        c,
        Tcp::new(45300, 25)
            .flags(TCP_ACK)
            .seq(CLIENT_ISN.wrapping_add(1))
            .ack(SERVER_ISN.wrapping_add(1)),
        false,
    ));
    assert_eq!(o.get("flows_created"), 1, "{:?}", o.delta.nonzero());
}

/// A SYN retransmitted after the SYN-ACK passed (the client never got it)
/// keeps the handshake: the client's ACK of the server's retransmitted
/// SYN-ACK, or of the first one, still makes the entry.
#[test]
fn a_retransmitted_syn_keeps_the_handshake() {
    let prog = Loaded::with_policy(Hook::Xdp, &[25], 0, DEFAULT_ALLOWED);
    let c = Ipv4Addr::new(10, 200, 1, 10);
    let syn = frame(
        c,
        Tcp::new(45400, 25).flags(TCP_SYN).seq(CLIENT_ISN).ack(0),
        false,
    );
    prog.run(&syn);
    prog.run(&frame(
        c,
        Tcp::new(25, 45400)
            .flags(TCP_SYN | TCP_ACK)
            .seq(SERVER_ISN)
            .ack(CLIENT_ISN.wrapping_add(1)),
        true,
    ));
    prog.run(&syn);
    let o = prog.run(&frame(
        c,
        Tcp::new(45400, 25)
            .flags(TCP_ACK)
            .seq(CLIENT_ISN.wrapping_add(1))
            .ack(SERVER_ISN.wrapping_add(1)),
        false,
    ));
    assert_eq!(o.get("flows_created"), 1, "{:?}", o.delta.nonzero());
}

/// A full table whose entries include one closed long ago (as if the daemon
/// had been down and not expired it): the kernel takes that entry's place
/// for a new flow (`flows_reclaimed`); live flows are never taken.
#[test]
fn a_full_table_reclaims_a_long_closed_entry_but_never_a_live_one() {
    use aya::maps::HashMap as BpfHashMap;
    use inspector_common::flow::{Flow, FlowKey, FLOWS_MAP};

    let mut prog = Loaded::with_table(Hook::Xdp, &[25], 0, DEFAULT_ALLOWED, Some(4), 0);
    let c = Ipv4Addr::new(10, 200, 1, 2);
    for p in 45500..45504 {
        let o = handshake(&prog, c, p);
        assert_eq!(
            o.get("flows_created"),
            1,
            "flow {p}: {:?}",
            o.delta.nonzero()
        );
    }
    let o = prog.run(&frame(
        c,
        Tcp::new(45500, 25)
            .flags(TCP_FIN | TCP_ACK)
            .seq(CLIENT_ISN.wrapping_add(1))
            .ack(SERVER_ISN.wrapping_add(1)),
        false,
    ));
    assert_eq!(o.get("flows_closed"), 1);
    // Age the closed entry past the grace period, as time would.
    {
        let mut flows: BpfHashMap<_, FlowKey, Flow> =
            BpfHashMap::try_from(prog.ebpf_mut().map_mut(FLOWS_MAP).expect("the flow table"))
                .expect("a hash map");
        let (k, mut f) = flows
            .iter()
            .filter_map(|r| r.ok())
            .find(|(k, _)| k.client_port == 45500)
            .expect("the closed flow's entry");
        f.created_ns = 0;
        f.client.cur.last_ns = 0;
        f.server.cur.last_ns = 0;
        flows.insert(k, f, 0).expect("rewriting the entry");
    }
    let o = handshake(&prog, c, 45504);
    assert_eq!(o.get("flows_reclaimed"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("flows_created"), 1, "{:?}", o.delta.nonzero());
    // Only live flows are left: the next one is refused.
    let o = handshake(&prog, c, 45505);
    assert_eq!(o.get("flows_refused"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("flows_reclaimed"), 0);
}
