//! Fuzz target: the reply fast path (`ServerState::line_ahead`: a reply
//! line's code read from one word, an EHLO keyword's bytes a word at a
//! time, the jump to a line's LF), which the kernel runs before every byte
//! step of the server's direction, against byte-at-a-time stepping.
//! `feed_server` (fast path, as the kernel) and `feed_server_bytewise` parse
//! the same segments from the same state and must agree on everything: the
//! masked bytes, the final state, the shared words, the results in order
//! (leaving out the steps that produced nothing).
//!
//! The input:
//!
//! - byte 0: bits 0-2, the reply that answers the client's EHLO (0: none,
//!   so that no keyword is filtered); bit 3, banner masking; bit 4, EHLO
//!   filtering off; bit 5, the stream starts after the greeting;
//! - byte 1: which of BDAT, STARTTLS, VRFY, ETRN, XCLIENT, XFORWARD, AUTH
//!   and HELP the policy allows, a bit each;
//! - bytes 2-3: seed of the segmentation (lengths from 1 byte to 9 KB, or up
//!   to the next LF);
//! - the rest: the server stream.

#![no_main]

use inspector_common::{
    config::{CFG_MASK_BANNER, CFG_NO_EHLO_FILTER},
    policy::entry_for,
    smtp::{feed_server, feed_server_bytewise, ServerOut, ServerState, Shared},
    verbs::{key_of, VerbKey},
};
use libfuzzer_sys::fuzz_target;

const POOL: [&str; 8] = [
    "BDAT", "STARTTLS", "VRFY", "ETRN", "XCLIENT", "XFORWARD", "AUTH", "HELP",
];

/// A small xorshift: segment lengths from the input's seed.
fn next(r: &mut u32) -> u32 {
    *r ^= *r << 13;
    *r ^= *r >> 17;
    *r ^= *r << 5;
    *r
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let keys: Vec<VerbKey> = POOL
        .iter()
        .enumerate()
        .filter(|(i, _)| data[1] & (1 << i) != 0)
        .map(|(_, v)| key_of(v.as_bytes()).unwrap())
        .collect();
    let policy = |k| entry_for(&keys, k);
    let mut cfg = 0;
    if data[0] & 8 != 0 {
        cfg |= CFG_MASK_BANNER;
    }
    if data[0] & 16 != 0 {
        cfg |= CFG_NO_EHLO_FILTER;
    }
    let mut st = ServerState {
        greeted: (data[0] >> 5) & 1,
        ..Default::default()
    };
    let mut shared = Shared {
        client_ehlo: (data[0] & 7) as u64,
        ..Default::default()
    };
    let stream = &data[4..];
    let mut seed = u32::from_le_bytes([data[2], data[3], 0x5a, 0xa5]);
    let nothing = ServerOut::default();
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
        let (mut fast_st, mut slow_st) = (st, st);
        let (mut fast_sh, mut slow_sh) = (shared, shared);
        let (mut fast_buf, mut slow_buf) = (rest[..n].to_vec(), rest[..n].to_vec());
        let (mut fast_out, mut slow_out) = (Vec::new(), Vec::new());
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
        assert!(fast_buf == slow_buf, "masked differently");
        assert_eq!(fast_st, slow_st, "different final state");
        assert_eq!(fast_sh, slow_sh, "different shared words");
        assert_eq!(fast_out, slow_out, "different results");
        st = fast_st;
        shared = fast_sh;
        at += n;
    }
});
