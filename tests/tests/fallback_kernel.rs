//! The kernel side of the reassembly fallback (docs/contract.md §5), with
//! BPF_PROG_TEST_RUN on the embedded programs: which segments are diverted
//! to the daemon's tap and which are dropped as before, the wake records
//! that tell the daemon when a held segment has become the next one, and
//! what happens to a segment the daemon writes back.
//!
//! Needs root (loads eBPF programs); run with `--test-threads=1`.

use aya::maps::{MapData, RingBuf};
use inspector_common::{
    config::CFG_MONITOR,
    fallback::{Wake, HEARTBEAT_TIMEOUT_NS, WAKE_MAP},
};
use inspector_tests::{
    frame::checksums_ok,
    kernel::{client_port, v4, v6, Hook, Loaded, Session, Shape, Verdict},
    netns::in_netns,
    NetNs,
};

/// The stand-in for the tap: an interface of this namespace other than
/// the loopback device (an XDP test run without a context arrives on the
/// loopback device, and the frames of the inspected interfaces must not
/// look written back).
fn tap() -> u32 {
    let mut found: Vec<u32> = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|e| {
            let p = e.ok()?.path().join("ifindex");
            std::fs::read_to_string(p).ok()?.trim().parse().ok()
        })
        .filter(|i| *i != 1)
        .collect();
    found.sort();
    *found
        .first()
        .expect("an interface besides the loopback device")
}

/// The wake ring, taken out of the object (the program keeps writing it)
/// so that it can be read while a session borrows the program.
fn wake_ring(prog: &mut Loaded) -> RingBuf<MapData> {
    RingBuf::try_from(prog.ebpf_mut().take_map(WAKE_MAP).expect("the wake ring"))
        .expect("a ring buffer")
}

/// Every wake record sent so far (the ring is emptied).
fn wakes(ring: &mut RingBuf<MapData>) -> Vec<Wake> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= std::mem::size_of::<Wake>());
        // SAFETY: checked length; Wake is plain data.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Wake) });
    }
    out
}

fn session(prog: &Loaded, shape: Shape) -> Session<'_> {
    let mut s = Session::new(prog, shape, client_port(), 25);
    s.open();
    s
}

/// The verdict a diverted segment gets: XDP_REDIRECT, or TC's redirect.
fn diverted(hook: Hook) -> Verdict {
    match hook {
        Hook::Xdp => Verdict::Redirect,
        Hook::Tc => Verdict::Bounce,
    }
}

/// A segment beyond the next expected byte goes to the tap, unchanged and
/// unparsed; each move of the next expected byte is told to the daemon;
/// written back once the gap is filled, it is inspected and masked; the
/// flow stops waking the daemon once the stream is past it.
fn divert_and_write_back(hook: Hook, shape: Shape) {
    let mut prog = Loaded::new(hook, 0);
    prog.announce_fallback(tap(), 0);
    let mut ring = wake_ring(&mut prog);
    let port = client_port();
    let mut s = Session::new(&prog, shape, port, 25);
    s.open();
    let o = s.client(b"NOOP\r\n");
    assert_eq!(o.verdict, Verdict::Pass);
    s.server(b"250 ok\r\n");
    assert!(
        wakes(&mut ring).is_empty(),
        "woken for a flow without diversions"
    );
    // "HELP\r\n" is late; the segment after it arrives first.
    let ahead_seq = s.cseq.wrapping_add(6);
    let ahead = s.client_frame_at(ahead_seq, b"STARTTLS\r\n");
    let o = prog.run(&ahead);
    assert_eq!(o.verdict, diverted(hook), "{:?}", o.delta.nonzero());
    assert_eq!(o.get("diverted"), 1);
    assert_eq!(o.get("dropped"), 0);
    assert_eq!(o.get("out_of_order_drops"), 0);
    assert_eq!(o.get("commands_seen"), 0, "a diverted segment was parsed");
    assert!(o.data_out == ahead, "a diverted segment was changed");
    assert!(wakes(&mut ring).is_empty(), "woken before anything moved");

    // The segment that fills the gap arrives, in order: while the daemon
    // holds segments of the flow it goes through the daemon too (one owner
    // at a time).
    let help = s.client_frame(b"HELP\r\n");
    let o = prog.run(&help);
    assert_eq!(o.verdict, diverted(hook), "{:?}", o.delta.nonzero());
    assert_eq!(o.get("commands_seen"), 0);
    assert!(wakes(&mut ring).is_empty(), "nothing moved");

    // The daemon writes both back through the tap, in order: inspected,
    // the second masked, both counted as reassembled; each move of the
    // next expected byte is told.
    let o = prog.run_on(&help, tap());
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("reassembled"), 1);
    let w = wakes(&mut ring);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].next_seq, ahead_seq);
    assert_eq!((w[0].flow.client_port, w[0].flow.server_port), (port, 25));
    let o = prog.run_on(&ahead, tap());
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("commands_masked"), 1);
    assert_eq!(o.get("reassembled"), 1);
    assert!(o.data_out != ahead, "not masked");
    let w = wakes(&mut ring);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].next_seq, ahead_seq.wrapping_add(10));
    // Past everything diverted: no more wakes for this flow.
    s.cseq = ahead_seq.wrapping_add(10);
    let o = s.client(b"NOOP\r\n");
    assert_eq!(o.verdict, Verdict::Pass);
    assert_eq!(o.get("reassembled"), 0, "from the inspected interface");
    assert!(wakes(&mut ring).is_empty());
}

#[test]
fn an_out_of_order_segment_is_diverted_and_inspected_when_written_back_xdp() {
    divert_and_write_back(Hook::Xdp, v4());
}

#[test]
fn an_out_of_order_segment_is_diverted_and_inspected_when_written_back_tc_ipv6() {
    divert_and_write_back(Hook::Tc, v6());
}

/// The server's direction too: a reply beyond the next expected byte goes
/// to the tap, and so does the one that fills the gap (one owner at a
/// time); written back in order through the tap (where the side check of
/// docs/contract.md §9 is not repeated: only the daemon writes there, and
/// only what was checked when it first came in), the reply to EHLO is
/// filtered as in order, with a valid checksum, and each move is told to
/// the daemon as the server's.
fn divert_a_reply_and_write_back(hook: Hook, shape: Shape) {
    let mut prog = Loaded::new(hook, 0);
    prog.announce_fallback(tap(), 0);
    let mut ring = wake_ring(&mut prog);
    let port = client_port();
    let mut s = Session::new(&prog, shape, port, 25);
    s.open();
    assert_eq!(s.client(b"EHLO c\r\n").verdict, Verdict::Pass);
    let first: &[u8] = b"250-server.test\r\n";
    let second: &[u8] = b"250-STARTTLS\r\n250 SIZE 1000\r\n";
    let ahead_seq = s.sseq.wrapping_add(first.len() as u32);
    let ahead = s.server_frame_at(ahead_seq, second);
    let o = prog.run(&ahead);
    assert_eq!(o.verdict, diverted(hook), "{:?}", o.delta.nonzero());
    assert_eq!(o.get("diverted"), 1);
    assert_eq!(o.get("out_of_order_drops"), 0);
    assert_eq!(
        o.get("ehlo_keywords_masked"),
        0,
        "a diverted reply was parsed"
    );
    assert!(o.data_out == ahead, "a diverted reply was changed");
    let gap = s.server_frame(first);
    let o = prog.run(&gap);
    assert_eq!(o.verdict, diverted(hook), "{:?}", o.delta.nonzero());
    assert!(wakes(&mut ring).is_empty(), "nothing moved");

    let o = prog.run_on(&gap, tap());
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("reassembled"), 1);
    assert_eq!(o.get("spoofed"), 0);
    let w = wakes(&mut ring);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].next_seq, w[0].server), (ahead_seq, 1));
    assert_eq!((w[0].flow.client_port, w[0].flow.server_port), (port, 25));
    let o = prog.run_on(&ahead, tap());
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("ehlo_keywords_masked"), 1);
    assert_eq!(o.get("reassembled"), 1);
    let at = ahead.len() - second.len();
    assert_eq!(&o.data_out[at..], b"250-XXXXXXXX\r\n250 SIZE 1000\r\n");
    assert!(checksums_ok(&o.data_out), "the masked reply's checksum");
    let w = wakes(&mut ring);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (w[0].next_seq, w[0].server),
        (ahead_seq.wrapping_add(second.len() as u32), 1)
    );
    // Past everything diverted: replies pass in place again, unwoken.
    s.sseq = ahead_seq.wrapping_add(second.len() as u32);
    s.client(b"NOOP\r\n");
    s.server(b"250 ok\r\n");
    assert!(wakes(&mut ring).is_empty());
}

#[test]
fn an_out_of_order_reply_is_diverted_and_filtered_when_written_back_xdp_ipv6() {
    divert_a_reply_and_write_back(Hook::Xdp, v6());
}

#[test]
fn an_out_of_order_reply_is_diverted_and_filtered_when_written_back_tc() {
    divert_a_reply_and_write_back(Hook::Tc, v4());
}

/// Without a live daemon the kernel drops, as without a fallback: none
/// announced, a heartbeat too old (a killed daemon), or monitor mode
/// (which drops nothing, so needs no reordering).
#[test]
fn without_a_live_daemon_an_out_of_order_segment_is_dropped() {
    for hook in [Hook::Xdp, Hook::Tc] {
        for (what, ifindex, age, flags, want) in [
            ("no daemon", 0, 0, 0, Verdict::Drop),
            (
                "stale heartbeat",
                tap(),
                HEARTBEAT_TIMEOUT_NS + 1_000_000,
                0,
                Verdict::Drop,
            ),
            ("monitor mode", tap(), 0, CFG_MONITOR, Verdict::Pass),
        ] {
            let mut prog = Loaded::new(hook, flags);
            prog.announce_fallback(ifindex, age);
            let mut ring = wake_ring(&mut prog);
            let s = session(&prog, v4());
            let ahead = s.client_frame_at(s.cseq.wrapping_add(6), b"STARTTLS\r\n");
            let o = prog.run(&ahead);
            let ctx = format!("{hook:?}, {what}: {:?}", o.delta.nonzero());
            assert_eq!(o.verdict, want, "{ctx}");
            assert_eq!(o.get("diverted"), 0, "{ctx}");
            assert_eq!(o.get("out_of_order_drops"), 1, "{ctx}");
            assert!(wakes(&mut ring).is_empty(), "{ctx}");
        }
    }
}

/// Written back too early (the gap is still open), a segment is diverted
/// again rather than passed: the daemon can reorder, never decide.
#[test]
fn a_segment_written_back_before_its_turn_is_diverted_again() {
    let mut prog = Loaded::new(Hook::Xdp, 0);
    prog.announce_fallback(tap(), 0);
    let s = session(&prog, v4());
    let ahead = s.client_frame_at(s.cseq.wrapping_add(6), b"STARTTLS\r\n");
    assert_eq!(prog.run(&ahead).verdict, Verdict::Redirect);
    let o = prog.run_on(&ahead, tap());
    assert_eq!(o.verdict, Verdict::Redirect, "{:?}", o.delta.nonzero());
    assert_eq!(o.get("reassembled"), 0);
    assert_eq!(o.get("commands_seen"), 0);
}

/// A retransmission that cannot be re-inspected (its checkpoint is gone)
/// but only repeats bytes already inspected and passed is a copy the server
/// may well have (a spurious retransmission): it goes to the fallback,
/// which keeps it until the server acknowledges those bytes, instead of
/// being dropped; the flow is not marked, so in-order segments are not
/// detoured. Written back (the server never acknowledged it), it is
/// dropped, as without a fallback. One that also carries new bytes is
/// dropped at once.
#[test]
fn an_unverifiable_copy_of_passed_bytes_goes_to_the_fallback() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut prog = Loaded::new(hook, 0);
        prog.announce_fallback(tap(), 0);
        let mut ring = wake_ring(&mut prog);
        let mut s = session(&prog, v4());
        let first = s.cseq;
        // EHLO with PIPELINING: then the commands need no reply in between,
        // and the server acknowledges none of them.
        s.client(b"EHLO x\r\n");
        s.server(b"250-server.test\r\n250 PIPELINING\r\n");
        let first_noop = s.cseq;
        // Six segments: the first one's checkpoint is gone after four.
        for _ in 0..6 {
            let o = s.client(b"NOOP\r\n");
            assert_eq!(
                o.verdict,
                Verdict::Pass,
                "{hook:?}: {:?}",
                o.delta.nonzero()
            );
        }
        assert_ne!(first, first_noop);
        let copy = s.client_frame_at(first_noop, b"NOOP\r\n");
        let o = prog.run(&copy);
        let ctx = format!("{hook:?}: {:?}", o.delta.nonzero());
        assert_eq!(o.verdict, diverted(hook), "{ctx}");
        assert_eq!(o.get("diverted"), 1, "{ctx}");
        assert_eq!(o.get("dropped"), 0, "{ctx}");
        assert_eq!(o.get("retrans_unverifiable"), 0, "{ctx}");
        assert!(o.data_out == copy, "a diverted copy was changed");
        // Not marked: the next segment is inspected at once, nobody woken.
        let o = s.client(b"VERB\r\n");
        assert_eq!(
            o.verdict,
            Verdict::Pass,
            "{hook:?}: {:?}",
            o.delta.nonzero()
        );
        assert_eq!(o.get("commands_masked"), 1, "{hook:?}");
        assert_eq!(o.get("diverted"), 0, "{hook:?}");
        assert!(wakes(&mut ring).is_empty(), "{hook:?}");
        // Written back: the kernel decides, as without a fallback.
        let o = prog.run_on(&copy, tap());
        let ctx = format!("{hook:?}: {:?}", o.delta.nonzero());
        assert_eq!(o.verdict, Verdict::Drop, "{ctx}");
        assert_eq!(o.get("retrans_unverifiable"), 1, "{ctx}");
        assert_eq!(o.get("reassembled"), 0, "{ctx}");
        // New bytes after old ones it cannot check: dropped.
        let mut both = b"NOOP\r\n".repeat(6)[2..].to_vec();
        both.extend_from_slice(b"VERB\r\nNOOP\r\n");
        let o = prog.run(&s.client_frame_at(first_noop.wrapping_add(2), &both));
        let ctx = format!("{hook:?}: {:?}", o.delta.nonzero());
        assert_eq!(o.verdict, Verdict::Drop, "{ctx}");
        assert_eq!(o.get("retrans_unverifiable"), 1, "{ctx}");
        assert_eq!(o.get("diverted"), 0, "{ctx}");
        // Once the server has acknowledged them, copies pass (it discards
        // them), as always.
        s.server(b"250 ok\r\n");
        let o = prog.run(&copy);
        assert_eq!(
            o.verdict,
            Verdict::Pass,
            "{hook:?}: {:?}",
            o.delta.nonzero()
        );
        assert_eq!(o.get("retrans_acked"), 1, "{hook:?}");
    }
}

/// Generic XDP sees GRO packets whole: a linear frame longer than its
/// device's MTU. Redirected to the tap it would not be segmented (as TC's
/// are), and written back it could not be forwarded (fragmentation needed,
/// DF): bytes the kernel passed would be lost after it. So it is not
/// diverted but dropped as out of order, before anything of it passes; a
/// frame within the MTU, on the same device, is diverted.
#[test]
fn a_frame_longer_than_its_devices_mtu_is_not_diverted() {
    let ns = NetNs::new("fbmtu");
    ns.ip(&[
        "link", "add", "m0", "mtu", "1500", "type", "veth", "peer", "name", "m1",
    ]);
    let ifindex = ns.link_json("m0")["ifindex"]
        .as_u64()
        .expect("the veth's ifindex") as u32;
    in_netns(&ns, move || {
        let mut prog = Loaded::new(Hook::Xdp, 0);
        // No such interface here: nothing arrives "from the tap".
        prog.announce_fallback(999, 0);
        let s = session(&prog, v4());
        let ahead = s.cseq.wrapping_add(6);
        let big = s.client_frame_at(ahead, &[b'a'; 2000]);
        let o = prog.run_on(&big, ifindex);
        assert_eq!(o.verdict, Verdict::Drop, "{:?}", o.delta.nonzero());
        assert_eq!(o.get("out_of_order_drops"), 1);
        assert_eq!(o.get("diverted"), 0);
        let small = s.client_frame_at(ahead, b"STARTTLS\r\n");
        let o = prog.run_on(&small, ifindex);
        assert_eq!(o.verdict, Verdict::Redirect, "{:?}", o.delta.nonzero());
        assert_eq!(o.get("diverted"), 1);
    });
}
