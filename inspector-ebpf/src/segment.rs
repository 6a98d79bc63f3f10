//! The per-segment decision: which segments of an inspected flow are
//! parsed, from which parser state, and what becomes of them (pass, masked
//! or not; drop; reset), for each direction.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use inspector_common::{
    config::{CFG_MIDSTREAM_PASS, CFG_MONITOR},
    counters::Counter,
    events::{kind, reason},
    flow::{
        classify, expected_after, seq_diff, Cursor, SegClass, DIR_DIVERTED, DIR_DROPPED, DIR_RESET,
        DIR_SYNCED,
    },
    smtp::cstate,
    verbs::OTHER,
};

use crate::{
    flow::{self, ClientSide, ServerSide, ACK, SYN},
    maps::{config, fallback_ifindex, fallback_target, wake, work_area},
    mask,
    packet::Packet,
    report::{count, count_n, send},
    rst, side, stream, words,
    workarea::WorkArea,
};

/// Largest payload inspected: a 64 KiB GSO/GRO packet fits.
const MAX_PAYLOAD: u32 = 65536;

enum Verdict {
    Pass,
    Drop(Counter),
    /// Turn the segment into a RST to the server and stop the flow
    /// (`ParserCtx::reset` says why: a field, not a payload here, which
    /// LLVM would leave undefined in the other variants, and the verifier
    /// refuses reading that).
    Reset,
    /// The flow was reset: answer the client's segment with a RST.
    ResetClient,
    /// Hand the segment to the reassembly fallback, whose tap is in
    /// `PacketInfo::divert_to` (docs/contract.md §5).
    Divert,
}

/// Inspects one TCP segment of an inspected port, whose headers the entry
/// point left in the work area. Returns the program's verdict. Not inlined:
/// a BPF subprogram whose arguments are the same whatever path header
/// parsing took (see `PacketInfo::tcp`).
#[inline(never)]
pub fn inspect<P: Packet>(ctx: &P, client_side: bool) -> u32 {
    let Some(w) = work_area() else {
        return P::PASS;
    };
    // Read the header fields once.
    let t = &w.packet.tcp;
    let (flags, seq, ack, payload_len) = (t.flags, t.seq, t.ack, t.payload_len as u32);
    let payload_off = t.payload_off;
    t.flow_key(client_side, &mut w.packet.key);
    w.packet.seq = seq;
    // CLOCK_MONOTONIC at the scheduler tick's resolution, which is all the
    // flow timestamps need (idle times of seconds); reading the TSC, as
    // bpf_ktime_get_ns does, costs ~15 ns a segment in a VM.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cfg = config();
    let monitor = cfg & CFG_MONITOR != 0;
    w.packet.monitor = monitor as u32;

    // A segment the fallback daemon wrote back into its tap. Only the
    // daemon writes into the tap, and it writes only what this program
    // redirected there (nothing else is routed out of a tap without
    // routes), after this very check for the server's direction: such a
    // segment's side was checked when it first came in.
    let fallback = fallback_ifindex();
    let from_fallback = fallback != 0 && ctx.ingress_ifindex() == fallback;
    if !client_side && !from_fallback {
        // Before anything of the flow is read or written: a forged server
        // packet must not move sequence numbers, acknowledgements, replies
        // or the SYN-ACK (docs/contract.md §9).
        let why = side::check_server(ctx, &w.packet.tcp, &mut w.lookup, now);
        if why != 0 {
            count(Counter::Spoofed);
            send(w, kind::SPOOFED, why, OTHER);
            return drop::<P>(monitor);
        }
    }
    // Neither handshake step below writes the flow table: one lookup serves
    // them (and the segment, unless the last ACK creates the entry).
    let mut found = flow::lookup(&w.packet.key);
    if client_side && flags & (SYN | ACK) == SYN {
        let why = flow::syn(w, seq, &found);
        if why != 0 {
            // The SYN is dropped: the client retries later.
            return refuse::<P>(w, why, monitor);
        }
    } else if !client_side && flags & (SYN | ACK) == SYN | ACK {
        flow::syn_ack(&w.packet.key, seq, ack);
    }
    if client_side && flags & (SYN | ACK) == ACK && !found.as_ref().is_some_and(|e| e.live()) {
        let why = flow::complete(w, seq, ack, now, found.is_some());
        if why != 0 {
            // The server has accepted the connection: the handshake's last
            // ACK becomes a RST to it, so that it lets go at once.
            let v = refuse::<P>(w, why, monitor);
            if monitor || !rst::rewrite(ctx, w, false) {
                return v;
            }
            return P::PASS;
        }
        found = flow::lookup(&w.packet.key);
    }
    let Some(entry) = found else {
        return midstream::<P>(w, payload_len, cfg, monitor);
    };
    let (cur, peer) = entry.cursors(client_side);
    if flow::track(cur, peer, flags, seq, ack, now, !client_side) {
        flow::client_flow_closed(&w.packet.key.client);
    }
    let client_flags = if client_side {
        cur.flags
    } else {
        flow::flags_of(peer)
    };
    if client_flags & DIR_DROPPED != 0 {
        // A limit's drop-connection action: nothing of the flow passes.
        count(Counter::FlowsDropped);
        send(w, kind::DROPPED, reason::FLOW_DROPPED, OTHER);
        return drop::<P>(monitor);
    }
    if payload_len == 0 {
        return P::PASS;
    }
    if cur.flags & DIR_SYNCED == 0 {
        return midstream::<P>(w, payload_len, cfg, monitor);
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
    stream::begin(w, seq, payload_off as u32, cfg);
    w.packet.from_fallback = from_fallback as u32;
    let verdict = if client_side {
        client(ctx, &mut entry.client(), w, seq, payload_len)
    } else {
        server(ctx, &mut entry.server(), w, seq, payload_len)
    };
    let verdict = match verdict {
        Verdict::Pass if w.masks.overflow != 0 => Verdict::Drop(Counter::MaskOverflowDrops),
        Verdict::Pass if w.packet.load_failed != 0 => Verdict::Drop(Counter::Malformed),
        v => v,
    };
    match verdict {
        Verdict::Pass => {
            if w.masks.masked_bytes != 0 && !monitor {
                mask::fix_checksum(ctx, w);
            }
            if w.packet.from_fallback != 0 {
                // Written back by the fallback daemon, and now inspected.
                count(Counter::Reassembled);
            }
            P::PASS
        }
        Verdict::Divert => {
            count(Counter::Diverted);
            ctx.redirect(w.packet.divert_to)
        }
        Verdict::Drop(c) => {
            if c != Counter::Dropped {
                count(c);
            }
            send(w, kind::DROPPED, reason_of(c), OTHER);
            drop::<P>(monitor)
        }
        Verdict::Reset => {
            let why = w.parser.reset as u8;
            count(Counter::FlowsReset);
            if why == reason::BDAT_MASKED {
                count(Counter::BdatResets);
            }
            send(w, kind::RESET, why, OTHER);
            if monitor {
                return P::PASS;
            }
            if rst::rewrite(ctx, w, false) {
                P::PASS
            } else {
                drop::<P>(monitor)
            }
        }
        Verdict::ResetClient => {
            // The server has its RST; the client learns at its next segment
            // (its retransmission) instead of retrying for minutes.
            count(Counter::Dropped);
            send(w, kind::RESET, reason::FLOW_RESET, OTHER);
            if rst::rewrite(ctx, w, true) {
                ctx.bounce()
            } else {
                P::DROP
            }
        }
    }
}

/// A new flow refused (`why`: an event reason): counted, reported, its
/// segment dropped unless in monitor mode.
#[inline(always)]
fn refuse<P: Packet>(w: &WorkArea, why: u8, monitor: bool) -> u32 {
    count(Counter::FlowsRefused);
    send(w, kind::REFUSED, why, OTHER);
    drop::<P>(monitor)
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
        Counter::FlowsDropped => reason::FLOW_DROPPED,
        _ => 0,
    }
}

#[inline(always)]
fn drop<P: Packet>(monitor: bool) -> u32 {
    if monitor {
        return P::PASS;
    }
    count(Counter::Dropped);
    P::DROP
}

/// Payload of a flow whose start was not seen: dropped, or passed
/// uninspected if so configured (docs/contract.md §6). It cannot be read
/// safely (it may be in the middle of a message body), and a client can make
/// its own entry disappear, so passing it is never the default.
#[inline(always)]
fn midstream<P: Packet>(w: &WorkArea, payload_len: u32, cfg: u32, monitor: bool) -> u32 {
    if payload_len == 0 {
        return P::PASS;
    }
    count(Counter::Midstream);
    if cfg & CFG_MIDSTREAM_PASS != 0 {
        send(w, kind::MIDSTREAM, reason::MIDSTREAM, OTHER);
        return P::PASS;
    }
    send(w, kind::DROPPED, reason::MIDSTREAM, OTHER);
    drop::<P>(monitor)
}

/// A client segment: parsed in order, re-inspected if it is a
/// retransmission, dropped if it leaves a gap.
#[inline(always)]
fn client<P: Packet>(
    ctx: &P,
    side: &mut ClientSide<'_>,
    w: &mut WorkArea,
    seq: u32,
    len: u32,
) -> Verdict {
    let peer_acked = side.peer_acked();
    if side.own.cur.flags & DIR_RESET != 0 {
        return Verdict::ResetClient;
    }
    if side.own.state.state == cstate::OPAQUE {
        return Verdict::Pass;
    }
    w.parser.shared = side.shared();
    let own = &mut *side.own;
    if owned_by_fallback(ctx, &mut own.cur, w, seq, len) {
        return Verdict::Divert;
    }
    match classify(seq, len, &own.cur, peer_acked) {
        SegClass::InOrder => {
            words::copy(&mut w.parser.client, &own.state);
            stream::run_client(ctx, w, 0, len);
            if w.parser.held != 0 {
                // Held at the segment's first byte: the gate it starts
                // behind has no reply yet, and the retransmission will pass
                // once it has. Held later: the command that opened the gate
                // is in this very segment (possibly after the reply to an
                // earlier gate, as a SASL line after the 334 to AUTH), with
                // bytes after it: the server cannot get the command without
                // them, and they cannot be judged before its reply. No
                // retransmission can fix that.
                if own.state.state == cstate::AWAIT_GATE
                    && w.parser.shared.gate_reply(own.state.gate_unit).is_none()
                {
                    return Verdict::Drop(Counter::AwaitingReplyDrops);
                }
                if w.parser.reset == 0 {
                    // (A masked BDAT before it keeps its own reason.)
                    w.parser.reset = reason::BYTES_BEFORE_REPLY as u32;
                }
                return reset(side, w);
            }
            if let Some(v) = apply_limit(side, w) {
                return v;
            }
            if w.parser.reset != 0 && w.packet.monitor == 0 {
                return reset(side, w);
            }
            let own = &mut *side.own;
            own.ckpts.record(seq, &own.state);
            words::copy(&mut own.state, &w.parser.client);
            own.cur.next_seq = seq.wrapping_add(len);
            side.publish(&w.parser.client);
            advanced(&mut side.own.cur, w, false);
            if w.parser.reset != 0 {
                // Monitor mode: reported, and the flow goes on.
                return Verdict::Reset;
            }
            Verdict::Pass
        }
        SegClass::Old { overlap } => {
            // Re-inspect the bytes seen before from the checkpoint at the
            // segment's start: same bytes, same masks. If the parser does not
            // end where it ended the first time, the bytes differ in a way
            // that matters.
            let Some(i) = own.ckpts.find(seq) else {
                return unverifiable(ctx, w, len, overlap);
            };
            words::copy(&mut w.parser.client, own.ckpts.at(i));
            w.parser.report = 0;
            let seen = len.min(overlap);
            stream::run_client(ctx, w, 0, seen);
            match expected_after(seq, len, overlap, &own.state, &own.ckpts) {
                None => return unverifiable(ctx, w, len, overlap),
                Some(e) if w.parser.held != 0 || !words::same_client_state(&w.parser.client, e) => {
                    return Verdict::Drop(Counter::RetransConflicts)
                }
                _ => {}
            }
            count(Counter::RetransReinspected);
            if len > overlap {
                w.parser.report = 1;
                w.parser.reset = 0;
                w.parser.seg.verb_start = overlap;
                stream::run_client(ctx, w, overlap, len);
                if w.parser.held != 0 {
                    return Verdict::Drop(Counter::AwaitingReplyDrops);
                }
                if let Some(v) = apply_limit(side, w) {
                    return v;
                }
                if w.parser.reset != 0 && w.packet.monitor == 0 {
                    return reset(side, w);
                }
                let own = &mut *side.own;
                own.ckpts.record(seq.wrapping_add(overlap), &own.state);
                words::copy(&mut own.state, &w.parser.client);
                own.cur.next_seq = seq.wrapping_add(len);
                side.publish(&w.parser.client);
                advanced(&mut side.own.cur, w, false);
                if w.parser.reset != 0 {
                    return Verdict::Reset;
                }
            }
            Verdict::Pass
        }
        SegClass::Acked => {
            count(Counter::RetransAcked);
            Verdict::Pass
        }
        SegClass::Future => divert(ctx, &mut own.cur, w, seq, len),
    }
}

/// A retransmission (either direction) that cannot be re-inspected (no
/// checkpoint where it starts or ends). One that only repeats bytes already
/// inspected and passed is a copy the receiver may well have (a spurious
/// retransmission, when the original was only overtaken on its way): the
/// fallback keeps it until the receiver acknowledges those bytes, and
/// forgets it then; if the receiver does not, the daemon writes it back
/// when its hold time is up, and it is dropped here, as it is without a
/// fallback. Nothing of it passes unless the receiver acknowledged it (then
/// it discards it). One that carries new bytes is dropped (the sender
/// retransmits).
#[inline(always)]
fn unverifiable<P: Packet>(ctx: &P, w: &mut WorkArea, len: u32, overlap: u32) -> Verdict {
    if len <= overlap && w.packet.from_fallback == 0 && fallback_tap(ctx, w) {
        return Verdict::Divert;
    }
    Verdict::Drop(Counter::RetransUnverifiable)
}

/// Whether a segment can go to the fallback now (a live daemon, a frame the
/// tap can take, not monitor mode), and if so, where (`divert_to`).
#[inline(always)]
fn fallback_tap<P: Packet>(ctx: &P, w: &mut WorkArea) -> bool {
    // Asked only here, not for every segment: for XDP it costs a helper
    // call or two, and few segments get this far.
    if w.packet.monitor != 0 || !ctx.redirectable() {
        return false;
    }
    // The precise clock, not the coarse one of the flow's timestamps: the
    // daemon's heartbeat is CLOCK_MONOTONIC, and a coarse reading may lag
    // it by a tick, which would look like a heartbeat from the future.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(ifindex) = fallback_target(now) else {
        return false;
    };
    w.packet.divert_to = ifindex;
    true
}

/// One owner at a time: while the fallback may hold segments of a
/// direction (`cur`), every later one goes through it too, in order or not,
/// so that the stream is parsed in one place, in sequence
/// (docs/contract.md §5). True if this one goes (segments the daemon wrote
/// back are the ones it lets through).
#[inline(always)]
fn owned_by_fallback<P: Packet>(
    ctx: &P,
    cur: &mut Cursor,
    w: &mut WorkArea,
    seq: u32,
    len: u32,
) -> bool {
    cur.flags & DIR_DIVERTED != 0
        && w.packet.from_fallback == 0
        && try_divert(ctx, cur, w, seq, len)
}

/// A segment that starts beyond the next expected byte of its direction
/// (`cur`): to the reassembly fallback if its daemon is there, which writes
/// it back once the bytes before it have passed; dropped otherwise (the
/// sender retransmits). In monitor mode nothing is dropped, so nothing
/// needs reordering.
#[inline(always)]
fn divert<P: Packet>(ctx: &P, cur: &mut Cursor, w: &mut WorkArea, seq: u32, len: u32) -> Verdict {
    if try_divert(ctx, cur, w, seq, len) {
        Verdict::Divert
    } else {
        Verdict::Drop(Counter::OutOfOrderDrops)
    }
}

/// Marks the direction (`cur`) as having segments with the fallback and
/// says where to send this one; false if there is no live daemon (or in
/// monitor mode). The mark is only set here, where it is clear, and cleared
/// by [`advanced`]: while it is set this direction writes only
/// `divert_end`, so the segments the daemon writes back (on another CPU,
/// maybe) are the only writer of the rest of this half.
#[inline(always)]
fn try_divert<P: Packet>(ctx: &P, cur: &mut Cursor, w: &mut WorkArea, seq: u32, len: u32) -> bool {
    if !fallback_tap(ctx, w) {
        return false;
    }
    let end = seq.wrapping_add(len);
    if cur.flags & DIR_DIVERTED == 0 {
        cur.divert_end = end;
        cur.flags |= DIR_DIVERTED;
    } else if seq_diff(end, cur.divert_end) > 0 {
        cur.divert_end = end;
    }
    true
}

/// The next expected byte of a direction (`cur`; the server's with
/// `server`) moved: if segments of it may be held by the fallback, tell its
/// daemon, until the stream has reached the end of every segment diverted
/// so far.
#[inline(always)]
fn advanced(cur: &mut Cursor, w: &WorkArea, server: bool) {
    if cur.flags & DIR_DIVERTED == 0 {
        return;
    }
    wake(&w.packet.key, cur.next_seq, server);
    if seq_diff(cur.next_seq, cur.divert_end) >= 0 {
        cur.flags &= !DIR_DIVERTED;
    }
}

/// The `drop-connection` action of a limit the segment went past
/// (docs/contract.md §10): this and every later segment of the flow are
/// dropped. (`reset` went to `ParserCtx::reset`, `mask` into the spans;
/// `log`, counted and reported already, changes nothing, and so does
/// everything in monitor mode.)
#[inline(always)]
fn apply_limit(side: &mut ClientSide<'_>, w: &mut WorkArea) -> Option<Verdict> {
    if w.parser.limit == 0 || w.packet.monitor != 0 {
        return None;
    }
    if side.mark_dropped() {
        flow::client_flow_closed(&w.packet.key.client);
    }
    Some(Verdict::Drop(Counter::FlowsDropped))
}

/// The flow is reset (docs/contract.md §4, §10): the segment becomes a RST
/// to the server, and later client segments are answered with a RST.
#[inline(always)]
fn reset(side: &mut ClientSide<'_>, w: &WorkArea) -> Verdict {
    if w.packet.monitor == 0 && side.mark_reset() {
        flow::client_flow_closed(&w.packet.key.client);
    }
    Verdict::Reset
}

/// A server segment: the same, for replies (whose EHLO keywords may be
/// masked, docs/contract.md §10).
#[inline(always)]
fn server<P: Packet>(
    ctx: &P,
    side: &mut ServerSide<'_>,
    w: &mut WorkArea,
    seq: u32,
    len: u32,
) -> Verdict {
    let peer_acked = side.peer_acked();
    if side.own.state.opaque() {
        return Verdict::Pass;
    }
    w.parser.shared = side.shared();
    let own = &mut *side.own;
    if owned_by_fallback(ctx, &mut own.cur, w, seq, len) {
        return Verdict::Divert;
    }
    match classify(seq, len, &own.cur, peer_acked) {
        SegClass::InOrder => {
            words::copy(&mut w.parser.server, &own.state);
            stream::run_server(ctx, w, 0, len);
            own.ckpts.record(seq, &own.state);
            words::copy(&mut own.state, &w.parser.server);
            own.cur.next_seq = seq.wrapping_add(len);
            side.publish(&w.parser.shared);
            advanced(&mut side.own.cur, w, true);
            Verdict::Pass
        }
        SegClass::Old { overlap } => {
            let Some(i) = own.ckpts.find(seq) else {
                return unverifiable(ctx, w, len, overlap);
            };
            words::copy(&mut w.parser.server, own.ckpts.at(i));
            w.parser.report = 0;
            let seen = len.min(overlap);
            stream::run_server(ctx, w, 0, seen);
            match expected_after(seq, len, overlap, &own.state, &own.ckpts) {
                None => return unverifiable(ctx, w, len, overlap),
                Some(e) if w.parser.server != *e => {
                    return Verdict::Drop(Counter::RetransConflicts)
                }
                _ => {}
            }
            count(Counter::RetransReinspected);
            if len > overlap {
                // What was re-published while re-inspecting is what the
                // flow already has; start the new bytes from the flow's view.
                w.parser.shared = side.shared();
                w.parser.report = 1;
                w.parser.seg.verb_start = overlap;
                stream::run_server(ctx, w, overlap, len);
                let own = &mut *side.own;
                own.ckpts.record(seq.wrapping_add(overlap), &own.state);
                words::copy(&mut own.state, &w.parser.server);
                own.cur.next_seq = seq.wrapping_add(len);
                side.publish(&w.parser.shared);
                advanced(&mut side.own.cur, w, true);
            }
            Verdict::Pass
        }
        SegClass::Acked => {
            count(Counter::RetransAcked);
            Verdict::Pass
        }
        SegClass::Future => divert(ctx, &mut own.cur, w, seq, len),
    }
}
