//! Oracle for the word-at-a-time fast paths (`inspector_common::scan`), which
//! the kernel and `feed_client` run before every byte step: they must change
//! nothing that stepping byte by byte (`feed_client_bytewise`) would not.
//!
//! Three properties:
//!
//! - streams: random client streams, biased toward what the fast paths
//!   handle (message bodies full of dots, LFs and CRs, BDAT chunks, long
//!   arguments, SASL lines), cut into random segments (some longer than a
//!   4 KiB chunk), fed both ways from the same state: same result (held or
//!   not), same masked bytes, same final state, same events in the same
//!   order;
//! - one call: `ClientState::skip_ahead` from any state at any offset of a
//!   random buffer (every alignment to the word grid) ends in the state that
//!   stepping the bytes it skipped ends in, and none of those bytes would
//!   have produced an action or an event;
//! - chunks: a segment longer than the kernel's 4 KiB chunk is parsed like
//!   its first chunk and the rest fed as two segments, as the kernel does.

use inspector_common::{
    policy::entry_for,
    scan::CHUNK,
    smtp::{cstate, feed_client, feed_client_bytewise, ClientState, Env, Held, Out, Seg},
    verbs::{id, key_of, PolicyEntry, VerbKey, OTHER},
};
use proptest::prelude::*;

const POOL: &[&str] = &[
    "DATA", "HELO", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "AUTH", "EHLO", "BDAT", "STARTTLS",
    "VERB", "X-FOO",
];

/// Gate replies decided by the test: the reply to gate command `unit` is
/// `codes[unit % codes.len()]`, known once `unit <= known`.
struct Script {
    keys: Vec<VerbKey>,
    codes: Vec<u16>,
    known: u32,
    chunking: bool,
    /// The action of limit rule `r`: `actions[r % len]` (log if empty).
    actions: Vec<u32>,
}

impl Env for Script {
    fn policy(&self, key: VerbKey) -> Option<PolicyEntry> {
        entry_for(&self.keys, key)
    }
    fn gate_reply(&self, unit: u32) -> Option<u16> {
        (unit != 0 && unit <= self.known).then(|| self.codes[unit as usize % self.codes.len()])
    }
    fn chunking(&self) -> bool {
        self.chunking
    }
    fn limit_action(&self, rule: u8) -> u32 {
        if self.actions.is_empty() {
            return 0;
        }
        self.actions[rule as usize % self.actions.len()]
    }
}

/// Limit actions: log, reset, drop-connection, off, mask.
fn actions() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..5, 0..6)
}

const EOLS: &[&[u8]] = &[b"\r\n", b"\n"];

/// How a body ends: an end-of-data line in one of its forms, or not at all.
const ENDS: &[&[u8]] = &[b".\r\n", b".\n", b".\r\r\n", b""];

/// Bytes of a body or an argument: mostly text, with many of the bytes the
/// fast paths must stop at or step over.
fn body_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(&b"abcdefgh XYZ0123+/="[..]),
            2 => Just(b'.'),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

/// A body line: text that often starts with one or two dots, then CRLF or
/// LF (an end-of-data line when the text is empty after one dot).
fn body_line() -> impl Strategy<Value = Vec<u8>> {
    (0usize..3, body_bytes(120), prop::sample::select(EOLS)).prop_map(|(dots, text, eol)| {
        let mut l = b"..".to_vec();
        l.truncate(dots);
        l.extend(text);
        l.extend_from_slice(eol);
        l
    })
}

const LEADS: &[&[u8]] = &[b"", b"", b"", b" ", b"\t"];
const DELIMS: &[&[u8]] = &[b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"\n"];

/// A command line for the verb fast path, and whether its verb is a gate
/// (which then must end the part: see [`Part`]).
fn command_line() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let verb = prop_oneof![
        4 => prop::sample::select(POOL).prop_map(|v| v.as_bytes().to_vec()),
        2 => prop::collection::vec(
            prop::sample::select(&b"aAzZ09-_mMrRxX"[..]), 1..10),
        1 => prop::collection::vec(any::<u8>(), 1..10),
    ];
    (
        prop::sample::select(LEADS),
        verb,
        any::<prop::sample::Index>(),
        prop::sample::select(DELIMS),
        body_bytes(40),
    )
        .prop_map(|(lead, verb, case, delim, args)| {
            let mut l = lead.to_vec();
            // Some verbs in lower or mixed case.
            let flip = case.index(4);
            l.extend(verb.iter().enumerate().map(|(i, &b)| match flip {
                1 => b.to_ascii_lowercase(),
                2 if i % 2 == 0 => b.to_ascii_lowercase(),
                _ => b,
            }));
            let upper: Vec<u8> = verb.to_ascii_uppercase();
            let gate = matches!(&upper[..], b"DATA" | b"AUTH" | b"STARTTLS");
            l.extend_from_slice(delim);
            if delim != b"\n" {
                l.extend(args.into_iter().filter(|&b| b != b'\n'));
                l.extend_from_slice(b"\r\n");
            }
            (l, gate)
        })
}

/// Part of a client stream. A part that ends with a command whose reply
/// decides what follows (DATA, AUTH, a SASL line, STARTTLS) ends a segment:
/// a client waits for that reply (a segment with bytes after such a
/// command is a flow the kernel resets, which ends the test stream).
#[derive(Clone, Debug)]
struct Part {
    bytes: Vec<u8>,
    gate: bool,
}

fn part(bytes: Vec<u8>, gate: bool) -> Part {
    Part { bytes, gate }
}

/// One piece of a client stream, in parts.
fn piece() -> impl Strategy<Value = Vec<Part>> {
    let verb = prop::sample::select(POOL);
    prop_oneof![
        // A command with (possibly long) arguments.
        3 => (verb, body_bytes(300)).prop_map(|(v, a)| {
            let mut l = v.as_bytes().to_vec();
            l.push(b' ');
            l.extend(a.into_iter().filter(|&b| b != b'\n'));
            l.extend_from_slice(b"\r\n");
            vec![part(l, matches!(v, "DATA" | "AUTH" | "STARTTLS"))]
        }),
        // Pipelined commands as the verb fast path reads them, and as it
        // must leave to the byte steps: verbs in any case, of 1 to 9
        // bytes, some with a byte no verb has, after leading whitespace,
        // ended by a space, a tab, a CR or a LF.
        3 => prop::collection::vec(command_line(), 1..12).prop_map(|lines| {
            // Up to the first gate command, which ends the part.
            let n = lines.iter().position(|(_, g)| *g).map_or(lines.len(), |i| i + 1);
            let gate = lines[n - 1].1;
            vec![part(lines[..n].iter().flat_map(|(l, _)| l.clone()).collect(), gate)]
        }),
        // DATA and a body whose lines often start with dots; ends with an
        // end-of-data line in one of its forms, or not at all.
        3 => (prop::collection::vec(body_line(), 0..40), prop::sample::select(ENDS))
            .prop_map(|(lines, end)| {
                let mut body = lines.concat();
                body.extend_from_slice(end);
                vec![part(b"DATA\r\n".to_vec(), true), part(body, false)]
            }),
        // AUTH and SASL lines.
        1 => prop::collection::vec(body_bytes(200), 1..4).prop_map(|lines| {
            let mut parts = vec![part(b"AUTH PLAIN\r\n".to_vec(), true)];
            for x in lines {
                let mut l: Vec<u8> = x.into_iter().filter(|&b| b != b'\n').collect();
                l.extend_from_slice(b"\r\n");
                parts.push(part(l, true));
            }
            parts
        }),
        // A BDAT chunk.
        2 => body_bytes(2000).prop_map(|c| {
            let mut l = format!("BDAT {}\r\n", c.len()).into_bytes();
            l.extend(c);
            vec![part(l, false)]
        }),
        1 => body_bytes(200).prop_map(|b| {
            vec![part(b"STARTTLS\r\n".to_vec(), true), part(b, false)]
        }),
        1 => body_bytes(100).prop_map(|b| vec![part(b, false)]),
        // MAIL or RCPT with an address (often long, bracketed or not) and
        // the characters the address rules look for.
        2 => (
            // The address round reads `TO:<`/`FROM:<` as one word: any
            // case, and near misses that differ from them only where an
            // upper-casing OR would hide it (0x1a is `:` | 0x20's twin).
            prop::sample::select(&[
                "MAIL FROM:", "RCPT TO:", "mail from: ", "RCPT ", "RCPT TO:<", "mail FROM:<",
                "RCPT tO:<", "MAIL fRoM:<", "RCPT  TO:<", "RCPT TO\x1a<", "RCPT TO:\x1c",
                "MAIL FROM\x1a<", "MAIL FROM:\x1c", "RCPT T\x0f:<", "RCPT TO:<<",
            ][..]),
            prop::collection::vec(prop_oneof![
                6 => Just(b'a'),
                1 => prop::sample::select(&b"<>|`\0 :@~\x02\x08"[..]),
            ], 0..600),
            // Line ends right after a closing `>` (which the verb's round
            // takes with the line) and near them.
            prop::sample::select(&[
                "\r\n", "\r\n", ">\r\n", ">\n", ">\r\r\n", "> SIZE=1\r\n", ">\r", ">",
            ][..]),
        ).prop_map(|(v, a, end)| {
            let mut l = v.as_bytes().to_vec();
            l.extend(a);
            l.extend_from_slice(end.as_bytes());
            vec![part(l, false)]
        }),
        // DATA and a message whose header section has lines near or past
        // 998 bytes, then a body.
        1 => (prop::collection::vec((990usize..1010, body_bytes(8)), 0..4), prop::collection::vec(body_line(), 0..10), prop::sample::select(ENDS))
            .prop_map(|(headers, lines, end)| {
                let mut body = vec![];
                for (n, tail) in headers {
                    body.extend(std::iter::repeat_n(b'h', n));
                    body.extend(tail.into_iter().filter(|&b| b != b'\n'));
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"\r\n");
                body.extend(lines.concat());
                body.extend_from_slice(end);
                vec![part(b"DATA\r\n".to_vec(), true), part(body, false)]
            }),
    ]
}

/// Where a segment ends.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// After `n` bytes.
    Bytes(usize),
    /// After the `k`-th next LF, as a client that writes whole lines sends
    /// it: segments then start at line starts, often with the end-of-data
    /// line and what follows it.
    Lines(usize),
}

/// Feeds `seg` both ways from `st`; on agreement moves `st` on and returns
/// the result.
fn feed_both(
    st: &mut ClientState,
    seg: &[u8],
    env: &Script,
) -> Result<Result<(), Held>, TestCaseError> {
    let (mut fast_st, mut slow_st) = (*st, *st);
    let (mut fast_buf, mut slow_buf) = (seg.to_vec(), seg.to_vec());
    let (mut fast_ev, mut slow_ev) = (Vec::<Out>::new(), Vec::<Out>::new());
    let fast = feed_client(&mut fast_st, &mut fast_buf, env, |o| fast_ev.push(*o));
    let slow = feed_client_bytewise(&mut slow_st, &mut slow_buf, env, |o| slow_ev.push(*o));
    prop_assert_eq!(fast, slow, "held by one path only");
    if fast.is_ok() {
        prop_assert!(
            fast_buf == slow_buf,
            "masked differently:\n{:?}\n{:?}",
            String::from_utf8_lossy(&fast_buf),
            String::from_utf8_lossy(&slow_buf)
        );
        prop_assert_eq!(fast_st, slow_st, "different final state");
        prop_assert_eq!(fast_ev, slow_ev, "different events");
        *st = fast_st;
    }
    Ok(fast)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn fast_paths_equal_byte_steps(
        pieces in prop::collection::vec(piece(), 1..12),
        allowed in prop::collection::vec(any::<bool>(), POOL.len()),
        codes in prop::collection::vec(prop::sample::select(&[354u16, 334, 220, 250, 501][..]), 1..6),
        chunking in any::<bool>(),
        actions in actions(),
        cuts in prop::collection::vec(prop_oneof![
            3 => (1usize..4).prop_map(Cut::Lines),
            6 => (1usize..200).prop_map(Cut::Bytes),
            2 => (200usize..2000).prop_map(Cut::Bytes),
            1 => (CHUNK - 8..3 * CHUNK).prop_map(Cut::Bytes),
        ], 1..16),
    ) {
        let parts: Vec<Part> = pieces.concat();
        let stream: Vec<u8> = parts.iter().flat_map(|p| p.bytes.iter().copied()).collect();
        // Stream offsets where a segment must end.
        let gates: Vec<usize> = parts
            .iter()
            .scan(0, |end, p| {
                *end += p.bytes.len();
                Some((*end, p.gate))
            })
            .filter_map(|(end, gate)| gate.then_some(end))
            .collect();
        let keys = POOL
            .iter()
            .zip(&allowed)
            .filter(|(_, &a)| a)
            .map(|(v, _)| key_of(v.as_bytes()).unwrap())
            .collect();
        let mut env = Script { keys, codes, known: 0, chunking, actions };
        let mut st = ClientState::default();
        let (mut at, mut i) = (0, 0);
        while at < stream.len() {
            let n = match cuts[i % cuts.len()] {
                Cut::Lines(k) => stream[at..]
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'\n')
                    .nth(k - 1)
                    .map_or(stream.len() - at, |(p, _)| p + 1),
                Cut::Bytes(n) => n.min(stream.len() - at),
            };
            let n = gates.iter().find(|&&g| g > at).map_or(n, |&g| n.min(g - at));
            i += 1;
            let seg = &stream[at..at + n];
            let mut held = feed_both(&mut st, seg, &env)?.is_err();
            if held && st.state == cstate::AWAIT_GATE && st.gate_unit > env.known {
                // The reply arrives; the retransmission is parsed again.
                env.known = st.gate_unit;
                held = feed_both(&mut st, seg, &env)?.is_err();
            }
            if held {
                // A gate opened inside this segment with bytes after it:
                // the kernel resets such a flow.
                break;
            }
            at += n;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn one_skip_equals_the_steps_it_skips(
        buf in body_bytes(200).prop_filter("not empty", |b| !b.is_empty()),
        start in any::<prop::sample::Index>(),
        aligned in any::<bool>(),
        state in prop_oneof![2 => Just(cstate::BODY), 1 => 0..=cstate::OPAQUE],
        sub in prop_oneof![3 => 0u8..4, 1 => 0u8..9],
        verb_id in prop::sample::select(&[id::DATA, id::BDAT, id::AUTH, id::MAIL, id::RCPT, OTHER][..]),
        count in 0u64..300,
        flags in 0u8..4,
        hdr in 0u8..3,
        hdr_len in prop_oneof![0u16..4, 990u16..1000, Just(u16::MAX)],
        lim in 0u8..16,
        line_len in prop_oneof![0u32..4, 500u32..520],
    ) {
        // Half the time on the word grid, where the body scan works.
        let at = start.index(buf.len()) as u32 & if aligned { !7 } else { !0 };
        let before = ClientState {
            state, sub, verb_id, count, flags, hdr, hdr_len, lim, line_len,
            units: 3, gate_unit: 3, ..Default::default()
        };
        let env = Script { keys: vec![], codes: vec![354], known: 0, chunking: true, actions: vec![] };
        let mut skipped = before;
        let to = skipped.skip_ahead(&buf[..], at, buf.len() as u32);
        prop_assert!(to >= at && to as usize <= buf.len());
        let mut stepped = before;
        let mut seg = Seg::default();
        for p in at..to {
            let out = stepped.step(buf[p as usize], p, &mut seg, &env);
            prop_assert_eq!(out, Out::default(), "byte {} skipped but it acts", p);
        }
        prop_assert_eq!(skipped, stepped);
    }
}

/// Feeds `seg` with `feed_client` from `st`: the result, the bytes, the
/// state after, the events.
fn feed(
    st: ClientState,
    seg: &[u8],
    env: &Script,
) -> (Result<(), Held>, Vec<u8>, ClientState, Vec<Out>) {
    let (mut st, mut buf, mut events) = (st, seg.to_vec(), vec![]);
    let res = feed_client(&mut st, &mut buf, env, |o| events.push(*o));
    (res, buf, st, events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The kernel parses a segment longer than its buffer chunk by chunk,
    /// each chunk like a segment of its own (README, Limits); `feed_client`
    /// must do the same: a segment of more than `CHUNK` bytes gives what
    /// its first `CHUNK` bytes and the rest, fed as two segments, give.
    #[test]
    fn a_chunk_is_parsed_like_a_segment_of_its_own(
        pieces in prop::collection::vec(piece(), 1..12),
        extra in 1usize..2 * CHUNK,
        allowed in prop::collection::vec(any::<bool>(), POOL.len()),
        chunking in any::<bool>(),
        actions in actions(),
    ) {
        let mut stream: Vec<u8> = pieces.concat().iter().flat_map(|p| p.bytes.iter().copied()).collect();
        // Pieces without bytes would make the loop below endless.
        prop_assume!(!stream.is_empty());
        while stream.len() < CHUNK + extra {
            stream.extend_from_within(..);
        }
        let seg = &stream[..CHUNK + extra];
        let keys = POOL
            .iter()
            .zip(&allowed)
            .filter(|(_, &a)| a)
            .map(|(v, _)| key_of(v.as_bytes()).unwrap())
            .collect();
        // Every gate reply known: nothing is held.
        let env = Script { keys, codes: vec![354, 334, 250, 220], known: u32::MAX, chunking, actions };
        let (whole, whole_bytes, whole_st, whole_ev) = feed(ClientState::default(), seg, &env);
        let (first, first_bytes, first_st, first_ev) = feed(ClientState::default(), &seg[..CHUNK], &env);
        let (rest, rest_bytes, rest_st, rest_ev) = feed(first_st, &seg[CHUNK..], &env);
        prop_assert!(whole.is_ok() && first.is_ok() && rest.is_ok());
        prop_assert!(whole_bytes[..CHUNK] == first_bytes[..], "first chunk masked differently");
        prop_assert!(whole_bytes[CHUNK..] == rest_bytes[..], "second chunk masked differently");
        prop_assert_eq!(whole_st, rest_st);
        // Offsets of the second part's spans are relative to its start.
        let shifted = rest_ev.into_iter().map(|mut o| {
            if o.act == inspector_common::smtp::act::MASK {
                o.mask_from += CHUNK as u32;
                o.mask_to += CHUNK as u32;
            }
            o
        });
        let parts: Vec<Out> = first_ev.into_iter().chain(shifted).collect();
        prop_assert_eq!(whole_ev, parts);
    }
}

/// The edges of the MAIL/RCPT line round (`ClientState::line_ahead`),
/// which random addresses rarely hit exactly: the closing `>` at and around
/// the 320th byte of the address (the address limit), each line end after
/// it, the segment ending at every byte of the line's tail, under every
/// limit action.
#[test]
fn the_address_round_agrees_with_byte_steps_at_its_limits() {
    let keys: Vec<VerbKey> = ["MAIL", "RCPT", "NOOP"]
        .iter()
        .map(|v| key_of(v.as_bytes()).unwrap())
        .collect();
    for actions in [vec![], vec![1], vec![4], vec![2]] {
        let env = Script {
            keys: keys.clone(),
            codes: vec![250],
            known: 0,
            chunking: false,
            actions,
        };
        for opening in ["RCPT TO:<", "MAIL FROM:<"] {
            for len in 316..=324 {
                for end in [">\r\n", ">\n", ">\r", ">", "> SIZE=1\r\n"] {
                    let mut line = opening.as_bytes().to_vec();
                    line.extend(std::iter::repeat_n(b'a', len));
                    line.extend_from_slice(end.as_bytes());
                    line.extend_from_slice(b"NOOP\r\n");
                    for cut in [line.len(), line.len() - 6, line.len() - 7, line.len() - 8] {
                        let mut st = ClientState::default();
                        let first = feed_both(&mut st, &line[..cut], &env)
                            .unwrap_or_else(|e| panic!("{opening}{len}{end:?} cut {cut}: {e}"));
                        if first.is_ok() {
                            // Held or not, both paths agreed (checked inside).
                            let _ = feed_both(&mut st, &line[cut..], &env).unwrap_or_else(|e| {
                                panic!("{opening}{len}{end:?} rest {cut}: {e}")
                            });
                        }
                    }
                }
            }
        }
    }
}
