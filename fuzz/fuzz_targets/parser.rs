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
//! each byte is parsed in. Checked on every segment:
//!
//! - no panic; the output has the input's length; every changed byte is `X`;
//! - only bytes parsed at a line start or in a verb are masked, never white
//!   space or LF, and never a byte of a body, a BDAT chunk, a SASL line or
//!   the opaque stream after STARTTLS;
//! - `feed_client` and the byte-at-a-time variant agree (bytes, state,
//!   held or not);
//! - a retransmission of the last segments in one (up to four, as many as
//!   the kernel keeps checkpoints for, fed since the last server segment or
//!   policy change), from the state before the first of them, is not held
//!   and ends in the state the segments reached one by one.
//!
//! And at the end, against [`expected_commands`], an independent reference
//! model of the command direction (it shares no code with the parser):
//! every verb the policy allows reaches the server unchanged, every other
//! verb is masked but for the leading bytes a segment end showed while they
//! could still become an allowed verb, and no other byte changes; the same
//! for every retransmission above, with the segment ends it has. The model
//! reads the stream up to the first allowed DATA, AUTH, STARTTLS or BDAT
//! line (what follows depends on replies it does not model).
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

use std::collections::{BTreeSet, VecDeque};

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

/// The verbs a policy allows, as texts.
fn policy(bytes: &[u8]) -> Vec<&'static str> {
    let bits = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]);
    let bits = if bits & 0x7f_ffff == 0 { 0x7fff } else { bits };
    POOL.iter()
        .enumerate()
        .filter(|(i, _)| (bits >> i) & 1 == 1)
        .map(|(_, v)| *v)
        .collect()
}

fn keys(policy: &[&str]) -> Vec<VerbKey> {
    policy
        .iter()
        .map(|v| key_of(v.as_bytes()).unwrap())
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

/// The client bytes the run accepted, for the checks that need more than
/// one segment.
#[derive(Default)]
struct Stream {
    input: Vec<u8>,
    /// What the parser made of them.
    output: Vec<u8>,
    /// The policy (0 or 1) each byte was parsed under.
    policy: Vec<usize>,
    /// The state each byte was parsed in.
    states: Vec<u8>,
    /// Segment ends (offsets in the stream).
    cuts: BTreeSet<usize>,
    /// The last accepted segments fed in the same conditions (no server
    /// segment, policy change or held segment between them): where each
    /// starts, and the state before it.
    recent: VecDeque<(usize, ClientState)>,
    /// Retransmissions of several segments in one: where they start, and
    /// what they became.
    regrouped: Vec<(usize, Vec<u8>)>,
}

/// Checkpoints the kernel keeps per direction.
const CHECKPOINTS: usize = 4;

fn client_segment(st: &mut ClientState, seg: &[u8], env: &View, which: usize, stream: &mut Stream) {
    let before = *st;

    let mut out = seg.to_vec();
    let mut after = before;
    let res = feed_client(&mut after, &mut out, env, |_| {});

    let mut out2 = seg.to_vec();
    let mut after2 = before;
    let mut states = vec![];
    let res2 = feed_bytewise(&mut after2, &mut out2, env, &mut states);
    assert_eq!(res, res2, "feed_client and step disagree on holding");

    if res.is_err() {
        // Held: the kernel drops it and keeps `before`.
        stream.recent.clear();
        return;
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
    *st = after;

    let start = stream.input.len();
    stream.input.extend_from_slice(seg);
    stream.output.extend_from_slice(&out);
    stream.policy.extend(std::iter::repeat_n(which, seg.len()));
    stream.states.extend_from_slice(&states);
    stream.cuts.insert(stream.input.len());
    if stream.recent.len() == CHECKPOINTS {
        stream.recent.pop_front();
    }
    stream.recent.push_back((start, before));

    // The recent segments retransmitted in one, from the first one's
    // checkpoint: the conditions are those they were parsed in.
    if stream.recent.len() > 1 {
        let (from, ckpt) = stream.recent[0];
        let mut again = stream.input[from..].to_vec();
        let mut end = ckpt;
        let res = feed_client(&mut end, &mut again, env, |_| {});
        assert_eq!(
            res,
            Ok(()),
            "retransmission of {} segments in one held",
            stream.recent.len()
        );
        assert_eq!(
            end,
            *st,
            "retransmission of {} segments in one ends in another state",
            stream.recent.len()
        );
        stream.regrouped.push((from, again));
    }
}

/// C-locale white space other than LF, as the docs define it (the model's
/// own copy).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r')
}

/// A verb the reference model judges.
struct Verb {
    /// Its bytes in the stream.
    at: std::ops::Range<usize>,
    /// The policy it was parsed under.
    policy: usize,
    allowed: bool,
}

/// What the reference model expects of the stream.
struct Model {
    /// What the server must get for each byte, `None` where the model does
    /// not judge.
    want: Vec<Option<u8>>,
    verbs: Vec<Verb>,
    /// For each byte of a judged verb, the verb's index in `verbs`.
    verb_of: Vec<Option<usize>>,
}

/// How many leading bytes of a verb the policy does not allow may pass:
/// the longest prefix that ends at a segment end (`cut`) and could still
/// become an allowed verb there (the parser cannot mask what it cannot
/// know yet).
fn kept(verb: &[u8], at: usize, policy: &[&str], cut: impl Fn(usize) -> bool) -> usize {
    let upper = verb.to_ascii_uppercase();
    (1..=upper.len())
        .filter(|&k| cut(at + k) && policy.iter().any(|v| v.as_bytes().starts_with(&upper[..k])))
        .max()
        .unwrap_or(0)
}

/// The reference model of the command direction, written from the rules the
/// docs give, not from the parser. The stream is read line by line, as the
/// docs say Postfix reads it: leading white space is skipped, the verb ends
/// at white space or LF, verbs are case-insensitive, a bare LF ends a line.
/// An allowed verb and everything that is not a verb pass unchanged; a verb
/// the policy does not allow is all `X` but for its [`kept`] prefix. A verb
/// parsed under two policies (a live change) is not judged, and nothing
/// after an allowed DATA, AUTH, STARTTLS or BDAT line is.
fn expected_commands(s: &Stream, policies: &[Vec<&str>; 2]) -> Model {
    let input = &s.input;
    let n = input.len();
    let mut m = Model {
        want: vec![None; n],
        verbs: vec![],
        verb_of: vec![None; n],
    };
    let mut i = 0;
    while i < n {
        if is_ws(input[i]) || input[i] == b'\n' {
            m.want[i] = Some(input[i]);
            i += 1;
            continue;
        }
        let vs = i;
        while i < n && !is_ws(input[i]) && input[i] != b'\n' {
            i += 1;
        }
        let ve = i;
        let line_end = input[ve..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |p| ve + p + 1);
        let verb = input[vs..ve].to_ascii_uppercase();
        // What decides the verb: its bytes and the byte that ends it.
        let p = s.policy[vs];
        let one_policy = s.policy[vs..(ve + 1).min(n)].iter().all(|&q| q == p);
        let gate = [&b"DATA"[..], b"AUTH", b"STARTTLS", b"BDAT"].contains(&verb.as_slice());
        if !one_policy {
            if gate {
                // Perhaps a gate: what follows is not modelled.
                return m;
            }
            i = line_end;
            continue;
        }
        let allowed = policies[p].iter().any(|v| v.as_bytes() == verb.as_slice());
        let keep = if allowed {
            verb.len()
        } else {
            kept(&verb, vs, &policies[p], |c| s.cuts.contains(&c))
        };
        for (j, &b) in input.iter().enumerate().take(ve).skip(vs) {
            m.want[j] = Some(if j < vs + keep { b } else { b'X' });
            m.verb_of[j] = Some(m.verbs.len());
        }
        m.verbs.push(Verb {
            at: vs..ve,
            policy: p,
            allowed,
        });
        for (w, &b) in m.want[ve..line_end].iter_mut().zip(&input[ve..line_end]) {
            *w = Some(b);
        }
        if allowed && gate {
            return m;
        }
        i = line_end;
    }
    m
}

/// The checks against the reference model, at the end of a run.
fn check_against_model(s: &Stream, policies: &[Vec<&str>; 2]) {
    let m = expected_commands(s, policies);
    for (i, w) in m.want.iter().enumerate() {
        if let Some(w) = w {
            assert_eq!(
                s.output[i],
                *w,
                "byte {i} of the client stream: the model wants {:?}, the parser made {:?}\n in: {:?}\nout: {:?}",
                *w as char,
                s.output[i] as char,
                String::from_utf8_lossy(&s.input),
                String::from_utf8_lossy(&s.output)
            );
        }
    }
    // The retransmissions in one segment: as the model says with the cuts
    // inside them gone, which only changes denied verbs across those cuts.
    for (from, again) in &s.regrouped {
        let (from, to) = (*from, from + again.len());
        let cut = |c: usize| s.cuts.contains(&c) && (c <= from || c >= to);
        for (k, &got) in again.iter().enumerate() {
            let i = from + k;
            let want = match (m.want[i], m.verb_of[i]) {
                (None, _) => {
                    // Not judged: at most a verb byte masked that a cut kept.
                    assert!(
                        got == s.output[i]
                            || (got == b'X'
                                && matches!(
                                    s.states[i],
                                    cstate::LINE_START | cstate::VERB | cstate::VERB_MASKED
                                )),
                        "byte {i} retransmitted in one segment from {from} to {to} became {got:#x}"
                    );
                    continue;
                }
                (Some(_), Some(v)) if !m.verbs[v].allowed => {
                    let v = &m.verbs[v];
                    let keep = kept(&s.input[v.at.clone()], v.at.start, &policies[v.policy], cut);
                    if i < v.at.start + keep {
                        s.input[i]
                    } else {
                        b'X'
                    }
                }
                (Some(w), _) => w,
            };
            assert_eq!(
                got, want,
                "byte {i} retransmitted in one segment from {from} to {to}: the model wants {:?}",
                want as char
            );
        }
    }
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
    let policy_keys = [keys(&policies[0]), keys(&policies[1])];
    let mut which = 0;
    let mut stream = Stream::default();
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
                    &policy_keys[which],
                    cfg,
                );
                stream.recent.clear();
                continue;
            }
            0b111 => COMMANDS[(op & 0x1f) as usize],
            _ => {
                let n = ((op & 0x3f) as usize + 1).min(rest.len());
                let (seg, tail) = rest.split_at(n);
                rest = tail;
                if op & 0x80 != 0 {
                    server_segment(&mut server, seg, &mut shared, &policy_keys[which], cfg);
                    stream.recent.clear();
                    continue;
                }
                if op & 0x40 != 0 {
                    which ^= 1;
                    stream.recent.clear();
                }
                seg
            }
        };
        let env = View {
            keys: &policy_keys[which],
            shared: &shared,
        };
        client_segment(&mut client, seg, &env, which, &mut stream);
        shared.publish_client(&client);
    }
    check_against_model(&stream, &policies);
});
