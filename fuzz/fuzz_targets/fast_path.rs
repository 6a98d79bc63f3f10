//! Fuzz target: the word-at-a-time fast paths (`inspector_common::scan`:
//! the body and argument skips, and the verb read a word at a time at a
//! line start), which the kernel runs before every byte step, against
//! byte-at-a-time stepping. `feed_client` (fast paths, as the kernel) and
//! `feed_client_bytewise` parse the same segments from the same state and
//! must agree on everything: held or not, the masked bytes, the final state,
//! the events in order.
//!
//! The input:
//!
//! - byte 0: the state the stream starts in (a body at a line start or in a
//!   line, a SASL line, a command's arguments, a BDAT chunk of `byte 2`
//!   bytes, a line start, a message's header section at a line start or
//!   `byte 2 * 4` bytes into a header line), so that the fuzzer reaches the
//!   fast paths without first guessing a command and its reply;
//! - byte 1: bit 0, the server advertised CHUNKING; bit 1, BDAT and STARTTLS
//!   are allowed too; bits 2-4, which reply every gate command (DATA, AUTH,
//!   a SASL line, STARTTLS) gets; bits 5-7, the action of every limit
//!   (log, reset, drop-connection, off, mask; 5-7 read as log);
//! - byte 2: the stream is the rest of the input repeated `(byte 2 & 3) + 1`
//!   times (segments then grow past the kernel's 4 KiB chunk);
//! - bytes 3-4: seed of the segmentation (lengths from 1 byte to 9 KB, or up
//!   to the next LF);
//! - the rest: the client stream.
//!
//! A gate reply is unknown until a segment is held waiting for it; the
//! segment is then offered again (the retransmission after the reply). A
//! segment still held after that opened a gate with bytes after it: the
//! kernel resets such a flow, and the run ends.

#![no_main]

use inspector_common::{
    policy::entry_for,
    smtp::{cstate, feed_client, feed_client_bytewise, ClientState, Env, Held, Out},
    verbs::{key_of, PolicyEntry, VerbKey, DEFAULT_ALLOWED, OTHER},
};
use libfuzzer_sys::fuzz_target;

const CODES: [u16; 8] = [354, 334, 220, 250, 354, 334, 501, 354];

struct Replies {
    keys: Vec<VerbKey>,
    code: u16,
    known: u32,
    chunking: bool,
    action: u32,
}

impl Env for Replies {
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        entry_for(&self.keys, key)
    }
    fn gate_reply(&self, unit: u32) -> Option<u16> {
        (unit != 0 && unit <= self.known).then_some(self.code)
    }
    fn chunking(&self) -> bool {
        self.chunking
    }
    fn limit_action(&self, _rule: u8) -> u32 {
        self.action
    }
}

/// The state a stream starts in.
fn start(kind: u8, count: u8) -> ClientState {
    let (state, sub, hdr, hdr_len) = match kind % 8 {
        0 => (cstate::BODY, 1, 0, 0), // at a line start
        1 => (cstate::BODY, 0, 0, 0), // inside a line
        2 => (cstate::SASL, 0, 0, 0),
        3 => (cstate::ARGS, 0, 0, 0),
        4 => (cstate::CHUNK, 0, 0, 0),
        // The header section, at a line start or inside a line.
        6 => (cstate::BODY, 1, 1, 0),
        7 => (cstate::BODY, 0, 1, count as u16 * 4 + 1),
        _ => (cstate::LINE_START, 0, 0, 0),
    };
    ClientState {
        state,
        sub,
        hdr,
        hdr_len,
        verb_id: OTHER,
        count: count as u64 + 1,
        units: 1,
        ..Default::default()
    }
}

/// A small xorshift: segment lengths from the input's seed.
fn next(r: &mut u32) -> u32 {
    *r ^= *r << 13;
    *r ^= *r >> 17;
    *r ^= *r << 5;
    *r
}

/// Feeds `seg` both ways from `st`, checks they agree, moves `st` on.
fn feed_both(st: &mut ClientState, seg: &[u8], env: &Replies) -> Result<(), Held> {
    let (mut fast_st, mut slow_st) = (*st, *st);
    let (mut fast_buf, mut slow_buf) = (seg.to_vec(), seg.to_vec());
    let (mut fast_ev, mut slow_ev) = (Vec::<Out>::new(), Vec::<Out>::new());
    let fast = feed_client(&mut fast_st, &mut fast_buf, env, |o| fast_ev.push(*o));
    let slow = feed_client_bytewise(&mut slow_st, &mut slow_buf, env, |o| slow_ev.push(*o));
    assert_eq!(fast, slow, "held by one path only");
    if fast.is_ok() {
        assert!(fast_buf == slow_buf, "masked differently");
        assert_eq!(fast_st, slow_st, "different final state");
        assert_eq!(fast_ev, slow_ev, "different events");
        *st = fast_st;
    }
    fast
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let mut verbs: Vec<&str> = DEFAULT_ALLOWED.to_vec();
    if data[1] & 2 != 0 {
        verbs.extend(["BDAT", "STARTTLS"]);
    }
    let mut env = Replies {
        keys: verbs
            .iter()
            .map(|v| key_of(v.as_bytes()).unwrap())
            .collect(),
        code: CODES[(data[1] >> 2) as usize % CODES.len()],
        known: 0,
        chunking: data[1] & 1 != 0,
        action: (data[1] >> 5) as u32,
    };
    let mut st = start(data[0], data[2]);
    let stream = data[5..].repeat((data[2] & 3) as usize + 1);
    let mut seed = u32::from_le_bytes([data[3], data[4], 0x5a, 0xa5]);
    let mut at = 0;
    while at < stream.len() {
        let r = next(&mut seed);
        let rest = &stream[at..];
        let n = match r % 5 {
            0 => 1 + (r >> 8) as usize % 16,
            1 => 1 + (r >> 8) as usize % 256,
            2 => 1 + (r >> 8) as usize % 2048,
            3 => 3000 + (r >> 8) as usize % 6000,
            _ => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| p + 1),
        }
        .min(rest.len());
        let seg = &rest[..n];
        let mut held = feed_both(&mut st, seg, &env).is_err();
        if held && st.state == cstate::AWAIT_GATE && st.gate_unit > env.known {
            env.known = st.gate_unit;
            held = feed_both(&mut st, seg, &env).is_err();
        }
        if held {
            return;
        }
        at += n;
    }
});
