//! Oracle for the reply fast path (`ServerState::line_ahead`), which the
//! kernel and `feed_server` run before every byte step of the server's
//! direction: it must change nothing that stepping byte by byte
//! (`feed_server_bytewise`) would not.
//!
//! Random reply streams (a greeting, replies to EHLO with keywords the
//! policy allows, denies or does not know, in any case, other replies, lines
//! that are not reply lines, bare LFs and CRs, odd bytes), with the client's
//! EHLO at a random reply (so that keyword filtering is on for one of them,
//! or none), random configuration bits (banner masking, no EHLO filtering),
//! cut into random segments (some longer than a 4 KiB chunk), fed both ways
//! from the same state: the same bytes masked, the same final state and
//! shared words, the same results in the same order (leaving out the steps
//! that produced nothing).

use inspector_common::{
    config::{CFG_MASK_BANNER, CFG_NO_EHLO_FILTER},
    policy::entry_for,
    scan::CHUNK,
    smtp::{feed_server, feed_server_bytewise, ServerOut, ServerState, Shared},
    verbs::{key_of, VerbKey},
};
use proptest::prelude::*;

/// Keywords of replies to EHLO: ones that name commands (allowed or not by
/// the test's policy), ones that name none, and some that start like them.
const KEYWORDS: &[&str] = &[
    "PIPELINING",
    "SIZE 10240000",
    "CHUNKING",
    "STARTTLS",
    "VRFY",
    "ETRN",
    "XFORWARD NAME ADDR",
    "XCLIENT",
    "AUTH PLAIN LOGIN",
    "AUTH=PLAIN",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "DSN",
    "SMTPUTF8",
    "CHUNK",
    "X",
    "HELP",
];

/// Verbs the test's policy may allow (a random subset of them).
const POOL: &[&str] = &[
    "BDAT", "STARTTLS", "VRFY", "ETRN", "XFORWARD", "XCLIENT", "AUTH", "HELP",
];

/// Text bytes: mostly plain, with the bytes the fast path must stop at.
fn text(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(&b"abcXYZ019 .-_=<>"[..]),
            1 => Just(b'\r'),
            1 => Just(b'\n'),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

const SEPS: &[&[u8]] = &[b"-", b" ", b"", b"\t"];
const EOLS: &[&[u8]] = &[b"\r\n", b"\r\n", b"\n", b"\r\r\n"];

/// One line of a reply: a code (usually three digits), a separator, and a
/// first word (a keyword in some case, or random) with text after it.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        6 => prop::sample::select(&["250", "220", "354", "334", "221", "550"][..])
            .prop_map(|c| c.as_bytes().to_vec()),
        1 => prop::collection::vec(prop::sample::select(&b"0123456789a -"[..]), 0..5),
    ];
    let word = prop_oneof![
        4 => prop::sample::select(KEYWORDS).prop_map(|k| k.as_bytes().to_vec()),
        2 => prop::collection::vec(prop::sample::select(&b"aAzZ09-_xX"[..]), 0..20),
        1 => text(30),
    ];
    (
        code,
        prop::sample::select(SEPS),
        word,
        any::<prop::sample::Index>(),
        // Often nothing after the first word: it then ends at the line's
        // end (a CR, or a bare LF).
        prop::option::of(text(60)),
        prop::sample::select(EOLS),
    )
        .prop_map(|(code, sep, word, case, rest, eol)| {
            let rest = rest.unwrap_or_default();
            let mut l = code;
            l.extend_from_slice(sep);
            l.extend(word.iter().enumerate().map(|(i, &b)| match case.index(3) {
                1 => b.to_ascii_lowercase(),
                2 if i % 2 == 0 => b.to_ascii_lowercase(),
                _ => b,
            }));
            if !rest.is_empty() {
                l.push(b' ');
                l.extend(rest.into_iter().filter(|&b| b != b'\n'));
            }
            l.extend_from_slice(eol);
            l
        })
}

/// A reply: continuation lines (`-`) and a final one (a space), as a
/// server sends them, or lines as they come.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (prop::collection::vec(prop::sample::select(KEYWORDS), 0..12), any::<bool>())
            .prop_map(|(kws, lower)| {
                let mut r = b"250-mail.example.com Hello\r\n".to_vec();
                for (i, k) in kws.iter().enumerate() {
                    let k = if lower && i % 3 == 0 { k.to_ascii_lowercase() } else { k.to_string() };
                    r.extend(format!("250-{k}\r\n").into_bytes());
                }
                r.extend_from_slice(b"250 OK\r\n");
                r
            }),
        3 => prop::collection::vec(line(), 1..8).prop_map(|ls| ls.concat()),
        1 => text(80),
    ]
}

#[derive(Clone, Debug)]
enum Cut {
    Bytes(usize),
}

/// Feeds one segment both ways from the same state; returns the result of
/// the fast way, having checked that both agree.
fn feed_both(
    st: &mut ServerState,
    shared: &mut Shared,
    seg: &[u8],
    keys: &[VerbKey],
    cfg: u32,
) -> Result<Vec<u8>, TestCaseError> {
    let (mut fast_st, mut slow_st) = (*st, *st);
    let (mut fast_sh, mut slow_sh) = (*shared, *shared);
    let (mut fast_buf, mut slow_buf) = (seg.to_vec(), seg.to_vec());
    let (mut fast_out, mut slow_out) = (Vec::<ServerOut>::new(), Vec::<ServerOut>::new());
    let policy = |k| entry_for(keys, k);
    let nothing = ServerOut::default();
    feed_server(
        &mut fast_st,
        &mut fast_buf,
        &mut fast_sh,
        &policy,
        cfg,
        |o| {
            if *o != nothing {
                fast_out.push(*o)
            }
        },
    );
    feed_server_bytewise(
        &mut slow_st,
        &mut slow_buf,
        &mut slow_sh,
        &policy,
        cfg,
        |o| {
            if *o != nothing {
                slow_out.push(*o)
            }
        },
    );
    prop_assert!(
        fast_buf == slow_buf,
        "masked differently:\n{:?}\n{:?}",
        String::from_utf8_lossy(&fast_buf),
        String::from_utf8_lossy(&slow_buf)
    );
    prop_assert_eq!(fast_st, slow_st, "different final state");
    prop_assert_eq!(fast_sh, slow_sh, "different shared words");
    prop_assert_eq!(fast_out, slow_out, "different results");
    *st = fast_st;
    *shared = fast_sh;
    Ok(fast_buf)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_reply_fast_path_equals_byte_steps(
        greeting in prop_oneof![
            Just(b"220 mail.example.com ESMTP Postfix\r\n".to_vec()),
            Just(b"220-mail.example.com\r\n220 ready\r\n".to_vec()),
            reply(),
        ],
        replies in prop::collection::vec(reply(), 0..10),
        ehlo_at in 0u64..6,
        gate in 0u64..0x800,
        allowed in prop::collection::vec(any::<bool>(), POOL.len()),
        cfg in prop::sample::select(&[0, CFG_MASK_BANNER, CFG_NO_EHLO_FILTER][..]),
        cuts in prop::collection::vec(prop_oneof![
            6 => (1usize..40).prop_map(Cut::Bytes),
            3 => (40usize..600).prop_map(Cut::Bytes),
            1 => (CHUNK - 8..2 * CHUNK).prop_map(Cut::Bytes),
        ], 1..12),
    ) {
        let keys: Vec<VerbKey> = POOL
            .iter()
            .zip(&allowed)
            .filter(|(_, a)| **a)
            .map(|(v, _)| key_of(v.as_bytes()).unwrap())
            .collect();
        let mut stream = greeting;
        for r in &replies {
            stream.extend_from_slice(r);
        }
        let mut st = ServerState::default();
        let mut shared = Shared {
            client_ehlo: ehlo_at,
            client_gate: gate,
            ..Default::default()
        };
        let (mut at, mut i) = (0, 0);
        while at < stream.len() {
            let Cut::Bytes(n) = cuts[i % cuts.len()];
            i += 1;
            let end = core::cmp::min(at + n, stream.len());
            feed_both(&mut st, &mut shared, &stream[at..end], &keys, cfg)?;
            at = end;
        }
    }
}

/// The fast path does take the lines of a plain reply to EHLO (not only
/// agree with the steps): a CHUNKING the policy denies is masked, the
/// others pass, in one segment, as the kernel's bench case (i) sends it.
#[test]
fn a_reply_to_ehlo_is_filtered_on_the_fast_path() {
    let reply = b"250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-CHUNKING\r\n250 8BITMIME\r\n";
    let mut buf = reply.to_vec();
    let mut st = ServerState {
        greeted: 1,
        ..Default::default()
    };
    let mut shared = Shared {
        client_ehlo: 1,
        ..Default::default()
    };
    let mut rounds = 0;
    feed_server(&mut st, &mut buf, &mut shared, &|_| None, 0, |_| {
        rounds += 1
    });
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-XXXXXXXX\r\n250 8BITMIME\r\n"
    );
    assert_eq!(st.replies, 1);
    // Five lines: a round for each line's code and keyword, a step for the
    // byte that ends the keyword, a round to the LF where text follows, a
    // step for the LF; against one step per byte (95).
    assert!(
        rounds < 25,
        "{rounds} rounds and steps for {} bytes",
        reply.len()
    );
}
