//! The last resort of docs/contract.md §4: a flow the inspector cannot
//! normalise is reset (and §10: so is a flow whose BDAT was masked).
//! A client that sends DATA and the message in one segment (RFC 2920
//! forbids it) cannot be served: the server must not get DATA without what
//! follows, and what follows cannot be judged before the reply to DATA. The
//! segment becomes a RST to the server; the client's next segment is turned
//! around into a RST to the client. Checked on the frames the programs
//! return (BPF_PROG_TEST_RUN), with checksums recomputed here.

use inspector_tests::kernel::{client_port, v4, v6, Hook, Loaded, Session, Shape, Verdict};

/// The parts of an untagged Ethernet + IPv4/IPv6 (no extension headers) +
/// TCP frame this test looks at.
#[derive(Debug)]
struct Seg {
    dst_mac: Vec<u8>,
    src_mac: Vec<u8>,
    src_ip: Vec<u8>,
    dst_ip: Vec<u8>,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_len: usize,
    checksum_ok: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ones_sum(parts: &[&[u8]]) -> u32 {
    let mut sum = 0u32;
    for p in parts {
        for c in p.chunks(2) {
            let w = if c.len() == 2 {
                be16(c, 0)
            } else {
                (c[0] as u16) << 8
            };
            sum += w as u32;
        }
    }
    sum
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn parse(f: &[u8]) -> Seg {
    let ethertype = be16(f, 12);
    let (l4, src_ip, dst_ip, tcp_len) = match ethertype {
        0x0800 => {
            let ihl = (f[14] & 0x0f) as usize * 4;
            let total = be16(f, 16) as usize;
            // The IPv4 header checksum must verify too.
            assert_eq!(
                fold(ones_sum(&[&f[14..14 + ihl]])),
                0xffff,
                "IPv4 header checksum"
            );
            (
                14 + ihl,
                f[26..30].to_vec(),
                f[30..34].to_vec(),
                total - ihl,
            )
        }
        0x86dd => (
            54,
            f[22..38].to_vec(),
            f[38..54].to_vec(),
            be16(f, 18) as usize,
        ),
        e => panic!("ethertype {e:#x}"),
    };
    assert!(f.len() >= l4 + tcp_len, "frame shorter than the IP length");
    let tcp = &f[l4..l4 + tcp_len];
    let doff = (tcp[12] >> 4) as usize * 4;
    let mut pseudo = src_ip.clone();
    pseudo.extend_from_slice(&dst_ip);
    let len = tcp_len as u32;
    if ethertype == 0x0800 {
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&len.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
    }
    Seg {
        dst_mac: f[0..6].to_vec(),
        src_mac: f[6..12].to_vec(),
        src_ip,
        dst_ip,
        src_port: be16(tcp, 0),
        dst_port: be16(tcp, 2),
        seq: be32(tcp, 4),
        ack: be32(tcp, 8),
        flags: tcp[13],
        payload_len: tcp_len - doff,
        checksum_ok: fold(ones_sum(&[&pseudo, tcp])) == 0xffff,
    }
}

const RST_ACK: u8 = 0x14;

fn data_with_the_message(hook: Hook, shape: Shape) {
    let prog = Loaded::new(hook, 0);
    let mut s = Session::new(&prog, shape, client_port(), 25);
    s.open();
    for (c, r) in [
        (&b"MAIL FROM:<a@b>\r\n"[..], &b"250 ok\r\n"[..]),
        (b"RCPT TO:<c@d>\r\n", b"250 ok\r\n"),
    ] {
        s.client(c);
        s.server(r);
    }
    let early = b"DATA\r\nSubject: early talker\r\n\r\nbody\r\n.\r\n";
    let frame = s.client_frame(early);
    let before = parse(&frame);
    let o = prog.run(&frame);
    assert_eq!(
        o.verdict,
        Verdict::Pass,
        "{hook:?}: {:?}",
        o.delta.nonzero()
    );
    assert_eq!(o.get("flows_reset"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("flows_closed"), 1, "the reset flow counts as closed");
    let rst = parse(&o.data_out);
    assert_eq!(rst.flags, RST_ACK, "{hook:?}: {rst:?}");
    assert_eq!(rst.payload_len, 0, "{hook:?}: the payload is cut off");
    assert!(
        rst.checksum_ok,
        "{hook:?}: TCP checksum of the RST to the server"
    );
    assert_eq!(
        (
            rst.src_ip,
            rst.dst_ip,
            rst.src_port,
            rst.dst_port,
            rst.seq,
            rst.ack
        ),
        (
            before.src_ip.clone(),
            before.dst_ip.clone(),
            before.src_port,
            before.dst_port,
            before.seq,
            before.ack
        ),
        "{hook:?}: same flow, same sequence number (the one the server expects)"
    );

    // The client retransmits: it gets a RST back, from the server's address.
    let o = prog.run(&frame);
    assert_eq!(
        o.verdict,
        Verdict::Bounce,
        "{hook:?}: {:?}",
        o.delta.nonzero()
    );
    let back = parse(&o.data_out);
    assert_eq!(back.flags, RST_ACK, "{hook:?}: {back:?}");
    assert_eq!(back.payload_len, 0);
    assert!(
        back.checksum_ok,
        "{hook:?}: TCP checksum of the RST to the client"
    );
    assert_eq!(
        (back.dst_mac, back.src_mac),
        (before.src_mac, before.dst_mac)
    );
    assert_eq!((back.src_ip, back.dst_ip), (before.dst_ip, before.src_ip));
    assert_eq!(
        (back.src_port, back.dst_port),
        (before.dst_port, before.src_port)
    );
    assert_eq!(back.seq, before.ack, "in the client's window");
    assert_eq!(back.ack, before.seq.wrapping_add(early.len() as u32));
}

#[test]
fn data_sent_with_the_message_resets_the_flow_xdp_ipv4() {
    data_with_the_message(Hook::Xdp, v4());
}

#[test]
fn data_sent_with_the_message_resets_the_flow_xdp_ipv6() {
    data_with_the_message(Hook::Xdp, v6());
}

#[test]
fn data_sent_with_the_message_resets_the_flow_tc_ipv4() {
    data_with_the_message(Hook::Tc, v4());
}

#[test]
fn data_sent_with_the_message_resets_the_flow_tc_ipv6() {
    data_with_the_message(Hook::Tc, v6());
}

/// Bytes sent after DATA in a later segment, before the 354: only that
/// segment waits (dropped, retransmitted); the flow is not reset.
#[test]
fn a_later_segment_before_the_reply_is_only_held() {
    let prog = Loaded::new(Hook::Xdp, 0);
    let mut s = Session::new(&prog, v4(), client_port(), 25);
    s.open();
    s.client(b"DATA\r\n");
    let o = prog.run(&s.client_frame(b"body\r\n"));
    assert_eq!(o.verdict, Verdict::Drop);
    assert_eq!(o.get("awaiting_reply_drops"), 1);
    assert_eq!(o.get("flows_reset"), 0);
}

/// docs/contract.md §10: a masked BDAT resets the flow. Its chunk follows
/// at once, without a reply, so the server (which answers the masked verb
/// with 500) would read the chunk, mail content, as commands. Here the
/// client was shown CHUNKING masked but uses BDAT anyway, with a chunk
/// that holds commands.
fn masked_bdat(hook: Hook, shape: Shape) {
    let prog = Loaded::new(hook, 0);
    let mut s = Session::new(&prog, shape, client_port(), 25);
    s.open();
    s.client(b"EHLO c\r\n");
    let o = s.server_run(b"250-mx\r\n250-CHUNKING\r\n250 SIZE\r\n");
    assert_eq!(o.get("ehlo_keywords_masked"), 1, "{:?}", o.delta.nonzero());
    for (c, r) in [
        (&b"MAIL FROM:<a@b>\r\n"[..], &b"250 ok\r\n"[..]),
        (b"RCPT TO:<c@d>\r\n", b"250 ok\r\n"),
    ] {
        s.client(c);
        s.server(r);
    }
    let smuggled = b"BDAT 44 LAST\r\nRCPT TO:<victim@example>\r\nDATA\r\nspam\r\n";
    let frame = s.client_frame(smuggled);
    let before = parse(&frame);
    let o = prog.run(&frame);
    assert_eq!(
        o.verdict,
        Verdict::Pass,
        "{hook:?}: {:?}",
        o.delta.nonzero()
    );
    assert_eq!(o.get("flows_reset"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("bdat_resets"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("commands_masked"), 1, "{:?}", o.delta.nonzero());
    let rst = parse(&o.data_out);
    assert_eq!(rst.flags, RST_ACK, "{hook:?}: {rst:?}");
    assert_eq!(rst.payload_len, 0, "{hook:?}: the chunk is cut off");
    assert!(rst.checksum_ok, "{hook:?}: TCP checksum of the RST");
    assert_eq!(
        (rst.src_port, rst.dst_port, rst.seq),
        (before.src_port, before.dst_port, before.seq)
    );
    // The client's next segment is answered with a RST.
    let o = prog.run(&frame);
    assert_eq!(o.verdict, Verdict::Bounce, "{hook:?}");
    let back = parse(&o.data_out);
    assert_eq!(back.flags, RST_ACK);
    assert!(back.checksum_ok);
}

#[test]
fn masked_bdat_resets_the_flow_xdp_ipv4() {
    masked_bdat(Hook::Xdp, v4());
}

#[test]
fn masked_bdat_resets_the_flow_xdp_ipv6() {
    masked_bdat(Hook::Xdp, v6());
}

#[test]
fn masked_bdat_resets_the_flow_tc_ipv4() {
    masked_bdat(Hook::Tc, v4());
}

#[test]
fn masked_bdat_resets_the_flow_tc_ipv6() {
    masked_bdat(Hook::Tc, v6());
}

/// A BDAT split across segments (`BD` | `AT 5`) is masked in both and
/// resets the flow at its end; in monitor mode nothing is reset.
#[test]
fn split_masked_bdat_resets_and_monitor_mode_only_counts() {
    let prog = Loaded::new(Hook::Xdp, 0);
    let mut s = Session::new(&prog, v4(), client_port(), 25);
    s.open();
    let o = s.client(b"BD");
    assert_eq!(o.verdict, Verdict::Pass);
    assert_eq!(o.get("flows_reset"), 0);
    let o = s.client(b"AT 5 LAST\r\nQUIT\r\n");
    assert_eq!(o.get("bdat_resets"), 1, "{:?}", o.delta.nonzero());
    assert_eq!(parse(&o.data_out).flags, RST_ACK);

    let prog = Loaded::new(Hook::Xdp, inspector_common::config::CFG_MONITOR);
    let mut s = Session::new(&prog, v4(), client_port(), 25);
    s.open();
    let frame = s.client_frame(b"BDAT 5 LAST\r\nQUIT\r\n");
    let o = prog.run(&frame);
    assert_eq!(o.get("bdat_resets"), 1, "counted in monitor mode");
    assert_eq!(o.data_out, frame, "but nothing changes");
}

/// docs/contract.md §10: a command line longer than 512 bytes, cut over
/// two segments, with each action of the limit. An honest line of 512
/// bytes matches nothing.
fn overlong_line(action: u32) -> (Loaded, Vec<Outcome>) {
    use inspector_common::{config::limit_shift, smtp::rule};
    let prog = Loaded::new(Hook::Xdp, action << limit_shift(rule::COMMAND_LINE));
    let mut outs = vec![];
    {
        let mut s = Session::new(&prog, v4(), client_port(), 25);
        s.open();
        let ok = format!("MAIL FROM:<{}>\r\n", "a".repeat(512 - 14));
        assert_eq!(ok.len(), 512);
        let o = s.client(ok.as_bytes());
        assert_eq!(o.get("limit_command_line"), 0, "{:?}", o.delta.nonzero());
        s.server(b"250 ok\r\n");
        let long = format!("RCPT TO:<{}>\r\n", "b".repeat(600));
        let (first, rest) = long.as_bytes().split_at(300);
        outs.push(s.client(first));
        let frame = s.client_frame(rest);
        outs.push(s.run_client_frame(&frame, rest.len()));
        // What the server and the client send next.
        outs.push(prog.run(&s.server_frame(b"250 ok\r\n")));
        outs.push(prog.run(&s.client_frame(b"QUIT\r\n")));
    }
    (prog, outs)
}

use inspector_tests::kernel::Outcome;

#[test]
fn an_overlong_command_line_is_logged_by_default() {
    let (_, o) = overlong_line(inspector_common::config::action::LOG);
    assert_eq!(o[0].get("limit_command_line"), 0, "300 bytes so far");
    assert_eq!(o[1].verdict, Verdict::Pass);
    assert_eq!(
        o[1].get("limit_command_line"),
        1,
        "{:?}",
        o[1].delta.nonzero()
    );
    assert_eq!(o[1].get("dropped") + o[1].get("flows_reset"), 0);
    assert_eq!(o[2].verdict, Verdict::Pass);
    assert_eq!(o[3].verdict, Verdict::Pass);
}

#[test]
fn an_overlong_command_line_resets_the_flow() {
    let (_, o) = overlong_line(inspector_common::config::action::RESET);
    assert_eq!(o[1].get("limit_command_line"), 1);
    assert_eq!(o[1].get("flows_reset"), 1, "{:?}", o[1].delta.nonzero());
    assert_eq!(o[1].get("bdat_resets"), 0);
    let rst = parse(&o[1].data_out);
    assert_eq!(rst.flags, RST_ACK);
    assert!(rst.checksum_ok);
    assert_eq!(o[3].verdict, Verdict::Bounce, "the client gets its RST");
}

#[test]
fn an_overlong_command_line_drops_the_connection() {
    let (_, o) = overlong_line(inspector_common::config::action::DROP_CONNECTION);
    assert_eq!(o[1].verdict, Verdict::Drop, "{:?}", o[1].delta.nonzero());
    assert_eq!(o[1].get("limit_command_line"), 1);
    assert_eq!(o[1].get("flows_dropped"), 1);
    for (i, what) in [
        (2, "the server's next segment"),
        (3, "the client's next segment"),
    ] {
        assert_eq!(o[i].verdict, Verdict::Drop, "{what}");
        assert_eq!(o[i].get("flows_dropped"), 1, "{what}");
    }
}

#[test]
fn an_overlong_command_line_is_not_even_counted_when_the_rule_is_off() {
    let (_, o) = overlong_line(inspector_common::config::action::OFF);
    assert_eq!(o[1].verdict, Verdict::Pass);
    assert_eq!(o[1].get("limit_command_line"), 0);
}

/// docs/contract.md §10: the 101st RCPT of a transaction, with the RCPT
/// limit's action `reset`: that segment becomes a RST. 100 pass, in any
/// number of transactions.
#[test]
fn the_101st_rcpt_of_a_transaction_resets_the_flow() {
    use inspector_common::{
        config::{action, limit_shift},
        smtp::rule,
    };
    for hook in [Hook::Xdp, Hook::Tc] {
        let prog = Loaded::new(hook, action::RESET << limit_shift(rule::RCPTS));
        let mut s = Session::new(&prog, v6(), client_port(), 25);
        s.open();
        for _ in 0..2 {
            s.client(b"MAIL FROM:<a@b>\r\n");
            s.server(b"250 ok\r\n");
            let o = s.client("RCPT TO:<c@d>\r\n".repeat(100).as_bytes());
            assert_eq!(o.verdict, Verdict::Pass, "{hook:?}");
            assert_eq!(o.get("limit_rcpts"), 0, "{hook:?}");
            s.server("250 ok\r\n".repeat(100).as_bytes());
        }
        let o = s.client(b"RCPT TO:<c@d>\r\n");
        assert_eq!(o.get("limit_rcpts"), 1, "{hook:?}: {:?}", o.delta.nonzero());
        assert_eq!(o.get("flows_reset"), 1, "{hook:?}");
        let rst = parse(&o.data_out);
        assert_eq!(rst.flags, RST_ACK, "{hook:?}");
        assert!(rst.checksum_ok, "{hook:?}");
    }
}
