//! Fuzz target for the shared SMTP stream parser.
//!
//! The input is a script:
//!
//! - bytes 0..3 and 3..6: two policies, as bitmasks over a pool of 23 verbs
//!   (the 15 of the default policy, then STARTTLS, VERB, ATRN, ONEX, BDAT,
//!   XEXCH50, X-FOO, EXPN); an empty mask means the default policy; the
//!   top bit of byte 2 turns banner masking on, that of byte 5 turns EHLO
//!   reply filtering off;
//! - then operations, one byte `op` each:
//!   - `0b00nnnnnn`: a client segment of the next `n + 1` bytes;
//!   - `0b01nnnnnn`: the same, after switching to the other policy (a live
//!     policy change);
//!   - `0b10nnnnnn`: a server segment of the next `n + 1` bytes;
//!   - `0b110iiiii`: server segment number `i` of [`REPLIES`];
//!   - `0b111iiiii`: client segment number `i` of [`COMMANDS`].
//!
//!   The canned segments let the fuzzer reach the states that need a reply
//!   matched to a command (body, SASL, chunk, opaque) without having to
//!   guess both.
//!
//! Client segments go through `feed_client` and through a byte-at-a-time
//! copy of it that calls `ClientState::step` directly and records the state
//! each byte is parsed in. Checked, without any model of SMTP:
//!
//! - no panic; the output has the input's length; every changed byte is `X`;
//! - only bytes parsed at a line start or in a verb are masked, never white
//!   space or LF, and never a byte of a body, a BDAT chunk, a SASL line or
//!   the opaque stream after STARTTLS;
//! - `feed_client` and the byte-at-a-time variant agree (bytes, state,
//!   held or not);
//! - re-feeding the segment from the saved state (a retransmission) gives
//!   the same result, bytes, events and state.
//!
//! A held segment is discarded, as the kernel does.
//!
//! Server segments go through `feed_server`, which masks the keywords of
//! denied commands in replies to EHLO (docs/contract.md §10). Checked: the
//! output has the input's length; every changed byte is `X` and was a
//! keyword character (letter, digit, `-`, `_`) of a reply line's text, or
//! a byte of the greeting with banner masking on, never a CR or LF;
//! re-feeding the segment from the saved state gives the same bytes, state
//! and published words.

#![no_main]

use inspector_common::{
    config::{CFG_MASK_BANNER, CFG_NO_EHLO_FILTER},
    policy::entry_for,
    smtp::{
        act, cstate, feed_client, feed_server, gate, is_space, ClientState, Env, Held, Out,
        ServerState, Shared,
    },
    verbs::{is_verb_char, key_of, PolicyEntry, VerbKey},
};
use libfuzzer_sys::fuzz_target;

const POOL: [&str; 23] = [
    "DATA", "HELO", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "AUTH", "EHLO", "ETRN", "HELP", "SAML",
    "SEND", "SOML", "VRFY", "STARTTLS", "VERB", "ATRN", "ONEX", "BDAT", "XEXCH50", "X-FOO", "EXPN",
];

/// Canned server segments.
const REPLIES: [&[u8]; 32] = [
    b"220 mx ESMTP\r\n",
    b"220-mx\r\n220 ESMTP\r\n",
    b"250 ok\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-StartTLS\r\n250-XFORWARD NAME\r\n250 8BITMIME\r\n",
    b"250-mx\r\n250 CHUNKING\r\n",
    b"354 go ahead\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"334 \r\n",
    b"235 2.7.0 ok\r\n",
    b"535 5.7.8 no\r\n",
    b"501 5.7.0 aborted\r\n",
    b"220 2.0.0 ready for TLS\r\n",
    b"454 4.7.0 no TLS\r\n",
    b"500 5.5.2 unrecognized\r\n",
    b"502 5.5.2 unrecognized\r\n",
    b"503 5.5.1 bad sequence\r\n",
    b"554 5.5.1 no valid recipients\r\n",
    b"250 ok\r\n250 ok\r\n",
    b"250 ok\r\n250 ok\r\n354 go\r\n",
    b"250 ok\r\n250 ok\r\n250 ok\r\n",
    b"221 bye\r\n",
    b"250 2.0.0 queued\r\n",
    b"354",
    b" go\r\n",
    b"334 x\n",
    b"220 go\n",
    b"2",
    b"50 ok\r",
    b"\n",
    b"250-CHUNK",
    b"ING\r\n250 ok\r\n",
    b"\x16\x03\x03\x00\x02hi",
];

/// Canned client segments.
const COMMANDS: [&[u8]; 32] = [
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<a@example>\r\n",
    b"RCPT TO:<b@example>\r\n",
    b"DATA\r\n",
    b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"STARTTLS\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b".\n",
    b"\n.\n",
    b"VERB x\r\n",
    b"XEXCH50 1 2\r\n",
    b"X-FOO\r\n",
    b"*\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"ST",
    b"ARTTLS\r\n",
    b"S",
    b"TARTTLS\r\n",
    b"\t\x0b\x0c\r noop\n",
    b"dAtA\n",
    b"bdat 4\tlast\n",
    b"STARTTLS\r\nVERB\r\n",
    b"\x16\x03\x01\x00\x05hello",
    b"\r\n",
];

fn policy(bytes: &[u8]) -> Vec<VerbKey> {
    let bits = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]);
    let bits = if bits & 0x7f_ffff == 0 { 0x7fff } else { bits };
    POOL.iter()
        .enumerate()
        .filter(|(i, _)| (bits >> i) & 1 == 1)
        .map(|(_, v)| key_of(v.as_bytes()).unwrap())
        .collect()
}

struct View<'a> {
    keys: &'a [VerbKey],
    shared: &'a Shared,
}

impl Env for View<'_> {
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        entry_for(self.keys, key)
    }
    fn gate_reply(&self, unit: u32) -> Option<u16> {
        self.shared.gate_reply(unit)
    }
    fn chunking(&self) -> bool {
        self.shared.chunking != 0
    }
}

/// The state the next byte is parsed in: `st.state`, or for a gate whose
/// reply is known, the state that reply leads to. `None`: it must be held.
fn effective_state(st: &ClientState, env: &impl Env) -> Option<u8> {
    if st.state != cstate::AWAIT_GATE {
        return Some(st.state);
    }
    let code = env.gate_reply(st.gate_unit)?;
    Some(match (st.gate_kind, code) {
        (gate::DATA, 354) => cstate::BODY,
        (gate::AUTH | gate::SASL, 334) => cstate::SASL,
        (gate::STARTTLS, 220) => cstate::OPAQUE,
        _ => cstate::LINE_START,
    })
}

/// Applies one step's action, checking that it masks only verb bytes.
fn apply(buf: &mut [u8], input: &[u8], states: &[u8], out: &Out) -> Result<(), Held> {
    match out.act {
        act::HOLD => Err(Held),
        act::MASK => {
            let (from, to) = (out.mask_from as usize, out.mask_to as usize);
            assert!(from <= to && to <= states.len(), "bad mask {from}..{to}");
            for i in from..to {
                assert!(
                    matches!(
                        states[i],
                        cstate::LINE_START | cstate::VERB | cstate::VERB_MASKED
                    ),
                    "byte {i} masked, parsed in state {}",
                    states[i]
                );
                assert!(
                    !is_space(input[i]) && input[i] != b'\n',
                    "white space masked at {i}"
                );
                buf[i] = b'X';
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `feed_client`, one `step` per byte, recording each byte's state.
fn feed_bytewise(
    st: &mut ClientState,
    buf: &mut [u8],
    env: &impl Env,
    states: &mut Vec<u8>,
) -> Result<(), Held> {
    let input = buf.to_vec();
    if input.is_empty() {
        // As the kernel (and `feed_client`): an empty segment is not parsed.
        return Ok(());
    }
    let mut seg = st.begin_segment();
    for (pos, &b) in input.iter().enumerate() {
        states.push(effective_state(st, env).unwrap_or(cstate::AWAIT_GATE));
        let out = st.step(b, pos as u32, &mut seg, env);
        apply(buf, &input, states, &out)?;
    }
    let out = st.end_segment(input.len() as u32, &seg, env);
    apply(buf, &input, states, &out)
}

fn client_segment(st: &mut ClientState, seg: &[u8], env: &View) {
    let before = *st;

    let mut out = seg.to_vec();
    let mut after = before;
    let mut events = vec![];
    let res = feed_client(&mut after, &mut out, env, |o| events.push(*o));

    let mut out2 = seg.to_vec();
    let mut after2 = before;
    let mut states = vec![];
    let res2 = feed_bytewise(&mut after2, &mut out2, env, &mut states);
    assert_eq!(res, res2, "feed_client and step disagree on holding");

    // A retransmission, from the saved state.
    let mut out3 = seg.to_vec();
    let mut after3 = before;
    let mut events3 = vec![];
    let res3 = feed_client(&mut after3, &mut out3, env, |o| events3.push(*o));
    assert_eq!(res, res3, "retransmission held differently");

    if res.is_err() {
        return; // held: the kernel drops it and keeps `before`
    }
    assert_eq!(out.len(), seg.len());
    for (i, (&a, &b)) in seg.iter().zip(&out).enumerate() {
        if a != b {
            assert_eq!(b, b'X', "byte {i} changed to {b:#x}");
        }
        if matches!(
            states[i],
            cstate::BODY | cstate::CHUNK | cstate::SASL | cstate::OPAQUE
        ) {
            assert_eq!(a, b, "byte {i} changed in state {}", states[i]);
        }
    }
    assert_eq!(out, out2, "feed_client and step mask differently");
    assert_eq!(after, after2, "feed_client and step end in other states");
    assert_eq!(out, out3, "retransmission masked differently");
    assert_eq!(after, after3, "retransmission ends in another state");
    assert_eq!(events, events3, "retransmission gives other events");
    *st = after;
}

/// A server segment through `feed_server`, checked against a
/// retransmission of it from the saved state.
fn server_segment(
    st: &mut ServerState,
    seg: &[u8],
    shared: &mut Shared,
    keys: &[VerbKey],
    cfg: u32,
) {
    let policy = |k| entry_for(keys, k);
    let (before, shared_before) = (*st, *shared);
    let mut out = seg.to_vec();
    feed_server(st, &mut out, shared, &policy, cfg, |_| {});
    assert_eq!(out.len(), seg.len());
    for (i, (&a, &b)) in seg.iter().zip(&out).enumerate() {
        if a != b {
            assert_eq!(b, b'X', "server byte {i} changed to {b:#x}");
            assert!(
                is_verb_char(a) || (before.greeted == 0 && cfg & CFG_MASK_BANNER != 0),
                "server byte {i} ({a:#x}) masked"
            );
            assert!(a != b'\n' && a != b'\r', "server line end masked at {i}");
        }
    }
    let (mut st2, mut shared2) = (before, shared_before);
    let mut out2 = seg.to_vec();
    feed_server(&mut st2, &mut out2, &mut shared2, &policy, cfg, |_| {});
    assert_eq!(out2, out, "server retransmission masked differently");
    assert_eq!(st2, *st);
    assert_eq!(shared2, *shared);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let policies = [policy(&data[0..3]), policy(&data[3..6])];
    // Banner masking and EHLO filtering off, from bits the policies leave.
    let cfg =
        ((data[2] >> 7) as u32 * CFG_MASK_BANNER) | ((data[5] >> 7) as u32 * CFG_NO_EHLO_FILTER);
    let mut which = 0;
    let mut shared = Shared::default();
    let mut client = ClientState::default();
    let mut server = ServerState::default();
    let mut rest = &data[6..];
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let seg: &[u8] = match op >> 5 {
            0b110 => {
                server_segment(
                    &mut server,
                    REPLIES[(op & 0x1f) as usize],
                    &mut shared,
                    &policies[which],
                    cfg,
                );
                continue;
            }
            0b111 => COMMANDS[(op & 0x1f) as usize],
            _ => {
                let n = ((op & 0x3f) as usize + 1).min(rest.len());
                let (seg, tail) = rest.split_at(n);
                rest = tail;
                if op & 0x80 != 0 {
                    server_segment(&mut server, seg, &mut shared, &policies[which], cfg);
                    continue;
                }
                if op & 0x40 != 0 {
                    which ^= 1;
                }
                seg
            }
        };
        let env = View {
            keys: &policies[which],
            shared: &shared,
        };
        client_segment(&mut client, seg, &env);
        shared.publish_client(&client);
    }
});
