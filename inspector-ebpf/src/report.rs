//! What the operator sees: the counters (`inspector stats`) and the events
//! (`inspector events`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use inspector_common::{
    counters::Counter,
    events::{kind, reason, Event},
    smtp::{event, rule, Out},
};

use crate::{
    maps::{COUNTERS, EVENTS, VERB_COUNTERS},
    workarea::WorkArea,
};

#[inline(always)]
pub fn count_n(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: this CPU's own slot of a per-CPU array: no other writer,
        // no atomic needed.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    count_n(c, 1)
}

#[inline(always)]
fn count_verb(verb_id: u8, masked: bool) {
    let slot = (verb_id as u32) * 2 + masked as u32;
    if let Some(p) = VERB_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: as in `count_n`.
        unsafe { *p += 1 };
    }
}

/// Counts what a parser step reported (a command, masked or not; a body, a
/// BDAT chunk, a SASL exchange or TLS starting), with an event for a masked
/// command.
#[inline(always)]
pub fn parser_event(w: &WorkArea, out: &Out) {
    match out.event {
        event::COMMAND => {
            count(Counter::CommandsSeen);
            count_verb(out.verb_id, false);
            if out.masked != 0 {
                count(Counter::CommandsMasked);
                count_verb(out.verb_id, true);
                send(w, kind::MASKED, 0, out.verb_id);
            }
        }
        event::BODY_START => count(Counter::Bodies),
        event::CHUNK => count(Counter::BdatChunks),
        event::STARTTLS => count(Counter::StarttlsSessions),
        event::SASL_START => count(Counter::SaslExchanges),
        _ => {}
    }
}

/// The event reason of a limit rule.
#[inline(always)]
pub fn limit_reason(r: u8) -> u8 {
    match r {
        rule::RCPTS => reason::TOO_MANY_RCPTS,
        rule::ADDRESS_LENGTH => reason::ADDRESS_TOO_LONG,
        rule::ADDRESS_CHARS => reason::ADDRESS_CHARS,
        rule::HEADER_LINE => reason::HEADER_LINE_TOO_LONG,
        _ => reason::COMMAND_LINE_TOO_LONG,
    }
}

/// Counts every limit rule that matched at one byte (`bits`: one
/// `rule::bit` each) and reports them with one event, whose reason names
/// the rule whose action applies (`Out::limit_rule`; two rules matching at
/// one byte is rare, and the counters have both).
#[inline(always)]
pub fn limit(w: &WorkArea, bits: u8, acting: u8) {
    for (r, c) in [
        (rule::COMMAND_LINE, Counter::LimitCommandLine),
        (rule::RCPTS, Counter::LimitRcpts),
        (rule::ADDRESS_LENGTH, Counter::LimitAddressLength),
        (rule::ADDRESS_CHARS, Counter::LimitAddressChars),
        (rule::HEADER_LINE, Counter::LimitHeaderLine),
    ] {
        if bits & rule::bit(r) != 0 {
            count(c);
        }
    }
    send(
        w,
        kind::LIMIT,
        limit_reason(acting),
        inspector_common::verbs::OTHER,
    );
}

/// Counts and reports an EHLO keyword masked in the server's reply.
#[inline(always)]
pub fn keyword_masked(w: &WorkArea) {
    count(Counter::EhloKeywordsMasked);
    send(w, kind::KEYWORD_MASKED, 0, inspector_common::verbs::OTHER);
}

/// Sends an event about the segment in the work area. Written straight into
/// the ring (reserve/submit) rather than built on the small BPF stack. A
/// full ring only loses the event; the counters still have it.
#[inline(always)]
pub fn send(w: &WorkArea, kind: u8, reason: u8, verb_id: u8) {
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points to the reserved entry, an `Event`-sized slot of
        // the ring that only this program writes until it is submitted.
        unsafe {
            (*ev).ts_ns = bpf_ktime_get_ns();
            (*ev).flow = w.packet.key;
            (*ev).kind = kind;
            (*ev).reason = reason;
            (*ev).verb_id = verb_id;
            (*ev).monitor = w.packet.monitor as u8;
            (*ev).verb = match kind {
                kind::MASKED => w.parser.client.verb.to_le_bytes(),
                kind::KEYWORD_MASKED => w.parser.server.text.to_le_bytes(),
                _ => [0; 8],
            };
            (*ev).seq = w.packet.seq;
        }
        entry.submit(0);
    }
}
