//! Flow tracking and the per-segment decision: which packets to parse, from
//! which parser state, and what to do with the result.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use inspector_common::{
    config::{CFG_MIDSTREAM_DROP, CFG_MONITOR},
    counters::Counter,
    events::{kind, reason},
    flow::{
        classify, expected_after, seq_diff, Flow, SegClass, DIR_ACKED, DIR_FIN, DIR_RESET, DIR_RST,
        DIR_SYNCED,
    },
    smtp::cstate,
    verbs::OTHER,
};

use crate::{
    maps::{config, count, count_n, FLOWS},
    pkt::Packet,
    rst,
    scratch::{self, Scratch},
};

/// Largest payload inspected: a 64 KiB GSO/GRO packet fits.
const MAX_PAYLOAD: u32 = 65536;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Client,
    Server,
}

/// Inspects one TCP segment of an inspected port. Returns the XDP action.
/// Not inlined: a BPF subprogram whose arguments are the same whatever path
/// header parsing took (see `Scratch::tcp`).
#[inline(never)]
pub fn segment<P: Packet>(ctx: &P, client_side: bool) -> u32 {
    let Some(s) = scratch::get() else {
        return P::PASS;
    };
    let dir = if client_side {
        Dir::Client
    } else {
        Dir::Server
    };
    // Read the header fields once; the flow key is built in place, since
    // the BPF stack is small.
    let t = &s.tcp;
    let (flags, seq, ack, payload_len) = (t.flags, t.seq, t.ack, t.payload_len as u32);
    let payload_off = t.payload_off;
    if client_side {
        s.key.client = t.src;
        s.key.server = t.dst;
        s.key.client_port = t.src_port;
        s.key.server_port = t.dst_port;
    } else {
        s.key.client = t.dst;
        s.key.server = t.src;
        s.key.client_port = t.dst_port;
        s.key.server_port = t.src_port;
    }
    s.seq = seq;
    let now = unsafe { bpf_ktime_get_ns() };
    let cfg = config();
    let monitor = cfg & CFG_MONITOR != 0;
    s.monitor = monitor as u32;

    if dir == Dir::Client && flags & (SYN | ACK) == SYN {
        new_flow(s, seq, now);
    }
    let Some(flow) = FLOWS.get_ptr_mut(&s.key) else {
        return midstream::<P>(s, payload_len, cfg, monitor);
    };
    let flow = unsafe { &mut *flow };

    let closed_before = (flow.client.cur.flags | flow.server.cur.flags) & (DIR_FIN | DIR_RST) != 0;
    // Each direction writes only its own half of the entry.
    let cur = match dir {
        Dir::Client => &mut flow.client.cur,
        Dir::Server => &mut flow.server.cur,
    };
    if dir == Dir::Server && flags & (SYN | ACK) == (SYN | ACK) && cur.flags & DIR_SYNCED == 0 {
        // Only the first: a forged or late SYN-ACK must not move the stream.
        cur.next_seq = seq.wrapping_add(1);
        cur.flags |= DIR_SYNCED;
    }
    cur.last_ns = now;
    if flags & ACK != 0 {
        if cur.flags & DIR_ACKED == 0 || seq_diff(ack, cur.acked) > 0 {
            cur.acked = ack;
        }
        cur.flags |= DIR_ACKED;
    }
    if flags & (FIN | RST) != 0 && !closed_before {
        count(Counter::FlowsClosed);
    }
    if flags & FIN != 0 {
        cur.flags |= DIR_FIN;
    }
    if flags & RST != 0 {
        cur.flags |= DIR_RST;
    }
    // The entry is not removed on FIN or RST: a FIN or RST that the receiver
    // then rejects (bad checksum, out of window) would otherwise turn the rest
    // of the flow into an uninspected midstream flow. `inspector attach`
    // expires closed and idle entries.

    if payload_len == 0 {
        return P::PASS;
    }
    if cur.flags & DIR_SYNCED == 0 {
        return midstream::<P>(s, payload_len, cfg, monitor);
    }
    count(Counter::PacketsInspected);
    count_n(Counter::BytesInspected, payload_len as u64);
    if payload_len > MAX_PAYLOAD {
        // Larger than any TSO/GRO packet; never pass what was not read.
        return drop::<P>(monitor);
    }
    let seq = if flags & SYN != 0 {
        seq.wrapping_add(1)
    } else {
        seq
    };

    scratch::begin(s, seq, payload_off as u32);
    let verdict = match dir {
        Dir::Client => client_segment(ctx, flow, s, seq, payload_len),
        Dir::Server => server_segment(ctx, flow, s, seq, payload_len),
    };
    let verdict = match verdict {
        Verdict::Pass if s.overflow != 0 => Verdict::Drop(Counter::MaskOverflowDrops),
        Verdict::Pass if s.load_failed != 0 => Verdict::Drop(Counter::Malformed),
        v => v,
    };
    match verdict {
        Verdict::Pass => {
            if s.masked_bytes != 0 && !monitor {
                ctx.fix_checksum(&s.tcp, s.csum_acc);
            }
            P::PASS
        }
        Verdict::Drop(c) => {
            if c != Counter::Dropped {
                count(c);
            }
            scratch::report(s, kind::DROPPED, reason_of(c), OTHER);
            drop::<P>(monitor)
        }
        Verdict::Reset => {
            count(Counter::FlowsReset);
            scratch::report(s, kind::RESET, reason::BYTES_BEFORE_REPLY, OTHER);
            if monitor {
                return P::PASS;
            }
            // Later client segments are answered with a RST; the entry
            // counts as closed and expires like any closed flow.
            if (flow.client.cur.flags | flow.server.cur.flags) & (DIR_FIN | DIR_RST) == 0 {
                count(Counter::FlowsClosed);
            }
            flow.client.cur.flags |= DIR_RESET | DIR_RST;
            if rst::rewrite(ctx, s, false) {
                P::PASS
            } else {
                drop::<P>(monitor)
            }
        }
        Verdict::ResetClient => {
            // The server has its RST; the client learns at its next segment
            // (its retransmission) instead of retrying for minutes.
            count(Counter::Dropped);
            scratch::report(s, kind::RESET, reason::FLOW_RESET, OTHER);
            if rst::rewrite(ctx, s, true) {
                ctx.bounce()
            } else {
                P::DROP
            }
        }
    }
}

/// The event reason of a drop counter.
#[inline(always)]
fn reason_of(c: Counter) -> u8 {
    match c {
        Counter::OutOfOrderDrops => reason::OUT_OF_ORDER,
        Counter::RetransConflicts => reason::CONFLICT,
        Counter::RetransUnverifiable => reason::UNVERIFIABLE,
        Counter::AwaitingReplyDrops => reason::AWAITING_REPLY,
        Counter::MaskOverflowDrops => reason::TOO_MANY_MASKS,
        Counter::Midstream => reason::MIDSTREAM,
        Counter::Dropped => reason::FLOW_RESET,
        _ => 0,
    }
}

enum Verdict {
    Pass,
    Drop(Counter),
    /// Turn the segment into a RST to the server and stop the flow.
    Reset,
    /// The flow was reset: answer the client's segment with a RST.
    ResetClient,
}

#[inline(always)]
fn drop<P: Packet>(monitor: bool) -> u32 {
    if monitor {
        return P::PASS;
    }
    count(Counter::Dropped);
    P::DROP
}

#[inline(always)]
fn midstream<P: Packet>(s: &Scratch, payload_len: u32, cfg: u32, monitor: bool) -> u32 {
    if payload_len == 0 {
        return P::PASS;
    }
    count(Counter::Midstream);
    scratch::report(s, kind::MIDSTREAM, reason::MIDSTREAM, OTHER);
    if cfg & CFG_MIDSTREAM_DROP != 0 {
        return drop::<P>(monitor);
    }
    P::PASS
}

#[inline(always)]
fn new_flow(s: &mut Scratch, seq: u32, now: u64) {
    let key = &s.key;
    if let Some(old) = FLOWS.get_ptr(key) {
        let old = unsafe { &*old };
        let closed = (old.client.cur.flags | old.server.cur.flags) & (DIR_FIN | DIR_RST) != 0;
        if !closed {
            // A retransmitted SYN, or a stray one inside a live flow: keep
            // the state (a forged SYN must not reset the parser).
            return;
        }
        let _ = FLOWS.remove(key);
    }
    let flow = &mut s.new_flow;
    *flow = Flow::default();
    flow.created_ns = now;
    flow.client.cur.next_seq = seq.wrapping_add(1);
    flow.client.cur.flags = DIR_SYNCED;
    flow.client.cur.last_ns = now;
    if FLOWS
        .insert(&s.key, &s.new_flow, BPF_NOEXIST as u64)
        .is_ok()
    {
        count(Counter::FlowsCreated);
    }
}

#[inline(always)]
fn client_segment<P: Packet>(
    ctx: &P,
    flow: &mut Flow,
    s: &mut Scratch,
    seq: u32,
    len: u32,
) -> Verdict {
    let peer_acked = flow.server.cur.acked_if_known();
    if flow.client.cur.flags & DIR_RESET != 0 {
        return Verdict::ResetClient;
    }
    if flow.client.state.state == cstate::OPAQUE {
        return Verdict::Pass;
    }
    s.shared = flow.shared;
    match classify(seq, len, &flow.client.cur, peer_acked) {
        SegClass::InOrder => {
            s.client = flow.client.state;
            scratch::run_client(ctx, s, 0, len);
            if s.held != 0 {
                // Held at the segment's first byte: the gate it starts
                // behind has no reply yet, and the retransmission will pass
                // once it has. Held later: the command that opened the gate
                // is in this very segment (possibly after the reply to an
                // earlier gate, as a SASL line after the 334 to AUTH), with
                // bytes after it: the server cannot get the command without
                // them, and they cannot be judged before its reply. No
                // retransmission can fix that.
                let start = &flow.client.state;
                if start.state == cstate::AWAIT_GATE
                    && s.shared.gate_reply(start.gate_unit).is_none()
                {
                    return Verdict::Drop(Counter::AwaitingReplyDrops);
                }
                return Verdict::Reset;
            }
            flow.client.ckpts.record(seq, &flow.client.state);
            flow.client.state = s.client;
            flow.client.cur.next_seq = seq.wrapping_add(len);
            flow.shared.publish_client(&s.client);
            Verdict::Pass
        }
        SegClass::Old { overlap } => {
            // Re-inspect the bytes seen before from the checkpoint at the
            // segment's start: same bytes, same masks. If the parser does not
            // end where it ended the first time, the bytes differ in a way
            // that matters.
            let Some(i) = flow.client.ckpts.find(seq) else {
                return Verdict::Drop(Counter::RetransUnverifiable);
            };
            s.client = flow.client.ckpts.at(i);
            s.report = 0;
            let seen = len.min(overlap);
            scratch::run_client(ctx, s, 0, seen);
            let expected =
                expected_after(seq, len, overlap, &flow.client.state, &flow.client.ckpts);
            match expected {
                None => return Verdict::Drop(Counter::RetransUnverifiable),
                Some(e) if s.held != 0 || s.client != e => {
                    return Verdict::Drop(Counter::RetransConflicts)
                }
                _ => {}
            }
            count(Counter::RetransReinspected);
            if len > overlap {
                s.report = 1;
                s.seg.verb_start = overlap;
                scratch::run_client(ctx, s, overlap, len);
                if s.held != 0 {
                    return Verdict::Drop(Counter::AwaitingReplyDrops);
                }
                flow.client
                    .ckpts
                    .record(seq.wrapping_add(overlap), &flow.client.state);
                flow.client.state = s.client;
                flow.client.cur.next_seq = seq.wrapping_add(len);
                flow.shared.publish_client(&s.client);
            }
            Verdict::Pass
        }
        SegClass::Acked => {
            count(Counter::RetransAcked);
            Verdict::Pass
        }
        SegClass::Future => Verdict::Drop(Counter::OutOfOrderDrops),
    }
}

#[inline(always)]
fn server_segment<P: Packet>(
    ctx: &P,
    flow: &mut Flow,
    s: &mut Scratch,
    seq: u32,
    len: u32,
) -> Verdict {
    let peer_acked = flow.client.cur.acked_if_known();
    if flow.server.state.opaque() {
        return Verdict::Pass;
    }
    s.shared = flow.shared;
    match classify(seq, len, &flow.server.cur, peer_acked) {
        SegClass::InOrder => {
            s.server = flow.server.state;
            scratch::run_server(ctx, s, 0, len);
            flow.server.ckpts.record(seq, &flow.server.state);
            flow.server.state = s.server;
            flow.server.cur.next_seq = seq.wrapping_add(len);
            publish_server(flow, s);
            Verdict::Pass
        }
        SegClass::Old { overlap } => {
            let Some(i) = flow.server.ckpts.find(seq) else {
                return Verdict::Drop(Counter::RetransUnverifiable);
            };
            s.server = flow.server.ckpts.at(i);
            let seen = len.min(overlap);
            scratch::run_server(ctx, s, 0, seen);
            let expected =
                expected_after(seq, len, overlap, &flow.server.state, &flow.server.ckpts);
            match expected {
                None => return Verdict::Drop(Counter::RetransUnverifiable),
                Some(e) if s.server != e => return Verdict::Drop(Counter::RetransConflicts),
                _ => {}
            }
            count(Counter::RetransReinspected);
            if len > overlap {
                // What was re-published while re-inspecting is what the
                // flow already has; start the new bytes from the flow's view.
                s.shared = flow.shared;
                scratch::run_server(ctx, s, overlap, len);
                flow.server
                    .ckpts
                    .record(seq.wrapping_add(overlap), &flow.server.state);
                flow.server.state = s.server;
                flow.server.cur.next_seq = seq.wrapping_add(len);
                publish_server(flow, s);
            }
            Verdict::Pass
        }
        SegClass::Acked => {
            count(Counter::RetransAcked);
            Verdict::Pass
        }
        SegClass::Future => Verdict::Drop(Counter::OutOfOrderDrops),
    }
}

/// Copies the server-written words of the snapshot back into the flow,
/// each with one store, and only those that changed.
#[inline(always)]
fn publish_server(flow: &mut Flow, s: &Scratch) {
    for i in 0..s.shared.gate_replies.len() {
        if flow.shared.gate_replies[i] != s.shared.gate_replies[i] {
            flow.shared.gate_replies[i] = s.shared.gate_replies[i];
        }
    }
    if flow.shared.chunking != s.shared.chunking {
        flow.shared.chunking = s.shared.chunking;
    }
}
