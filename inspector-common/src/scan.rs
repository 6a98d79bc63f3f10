//! Word-at-a-time fast paths of the parsers (most for the client's
//! direction; [`scan_word`], [`word_key`] and [`scan_to_lf`] serve the
//! server's replies too, through `ServerState::line_ahead`).
//!
//! Most client bytes are body or argument bytes, where the state machine of
//! `ClientState::step` only waits for one byte (a LF, or a dot right after
//! one). These functions move over such bytes eight at a time (SWAR: "SIMD
//! within a register", byte tests on a 64-bit word) and leave the state
//! exactly as stepping byte by byte would.
//! [`crate::smtp::ClientState::skip_ahead`] picks the one that applies to
//! the state; the kernel's per-byte callback calls it before every
//! `ClientState::step`, and so does [`crate::smtp::feed_client`], which
//! every userspace test, the fuzzer and the benchmarks use: both run this
//! very code. The property test
//! `tests/fast_path.rs` and the `fast_path` fuzz target check it against
//! byte-at-a-time stepping ([`crate::smtp::feed_client_bytewise`]), and
//! `tests/reply_fast_path.rs` and the `reply_fast_path` target the reply
//! round against [`crate::smtp::feed_server_bytewise`].
//!
//! Offsets here are offsets into the buffer the kernel copied the current
//! chunk into: word reads are aligned to its start, which is what the
//! kernel's loader needs. Every loop has a fixed bound per call
//! ([`BODY_WORDS`], [`SKIP_WORDS`]) so that the verifier checks a small
//! callback; a caller that wants to go further calls again.

/// Bytes the kernel parses per chunk: a segment is copied into a per-CPU
/// buffer of this size and parsed one chunk after the other, each chunk like
/// a segment of its own (a verb cut by a chunk boundary is decided as if TCP
/// had cut the segment there). More than any single-buffer XDP frame holds
/// (a 4 KiB page minus headroom and `skb_shared_info`).
pub const CHUNK: usize = 4096;

/// Words a body scan looks at per call: 2 KiB, so that a full-size
/// segment takes one call. Each call costs about 9 ns around the scan
/// itself in the kernel, and every 32 words of bound about 8,000-11,500
/// instructions of verification (the verifier walks the loop once per
/// word): 128 was measured at 40 ns less than 32 per 1448-byte segment for
/// 35k more instructions, and 256 at 6-9 ns less than 128 for 31k more.
pub const BODY_WORDS: u32 = 256;
/// Words an argument scan looks at per call.
pub const SKIP_WORDS: u32 = 8;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const LFS: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const DOTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;

/// A chunk buffer read a word at a time.
pub trait Words {
    /// The little-endian 64-bit word at buffer offset `at`. Callers only
    /// ask for `at` a multiple of 8 below the end of the scanned range;
    /// the last word may reach past that end (the caller leaves those
    /// bytes out: in the kernel's buffer they are stale).
    fn word(&self, at: usize) -> u64;
    /// Word `i` of a run of words from offset `base`: `word(base + 8 * i)`,
    /// for `i` below [`BODY_WORDS`]. Apart so that the kernel bounds `base`
    /// once per run, not once per word.
    #[inline(always)]
    fn word_at(&self, base: usize, i: usize) -> u64 {
        self.word(base + 8 * i)
    }
    /// The byte at offset `at`. Callers only ask for `at` inside the
    /// scanned range.
    fn byte(&self, at: usize) -> u8;
}

/// Userspace: a chunk is a slice. Past its end, a word reads LFs, as if
/// the buffer held a stale line there: a fast path that did not leave them
/// out would find a line end where there is none, and the tests that check
/// the fast paths against byte steps would see it.
impl Words for [u8] {
    #[inline(always)]
    fn word(&self, at: usize) -> u64 {
        let mut w = [b'\n'; 8];
        if at + 8 <= self.len() {
            w.copy_from_slice(&self[at..at + 8]);
        } else if at < self.len() {
            w[..self.len() - at].copy_from_slice(&self[at..]);
        }
        u64::from_le_bytes(w)
    }
    #[inline(always)]
    fn byte(&self, at: usize) -> u8 {
        self[at]
    }
}

/// SWAR zero-byte test: bit 7 of every byte of `x` that is zero is set (and
/// possibly of a byte 0x01 just above a zero byte: a false positive only
/// ever sends the caller to the careful byte-by-byte path).
#[inline(always)]
pub fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080
}

/// Index of the lowest flagged byte of a non-zero [`zero_bytes`] result,
/// without a count-trailing-zeros instruction (BPF has none).
#[inline(always)]
pub fn lowest_byte(m: u64) -> u32 {
    // The lowest flagged bit, at 8k + 7, moved to bit 8k; the product puts
    // byte 7 - k of the constant, k, in the top byte. No branch: a cascade
    // of tests would hand the verifier eight paths with eight known
    // values, and it would check everything after them eight times.
    let t = (m & m.wrapping_neg()) >> 7;
    (t.wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
}

/// Body fast path: skips whole words that cannot hold the start of an
/// end-of-data line (a `.` right after a LF, or at the start of the scan if
/// `bol`, the scan starts at a line start). LFs inside such words only move
/// the line position. Returns the offset reached (`at` if it could not skip
/// a word; it works from a word boundary only) and whether that offset is
/// at a line start.
#[inline(always)]
pub fn scan_body<W: Words + ?Sized>(buf: &W, at: u32, end: u32, bol: bool) -> (u32, bool) {
    if at & 7 != 0 {
        return (at, bol);
    }
    // Words to look at, counted once: the loop then tests one bound.
    // 64-bit counters: no zero-extension of 32-bit ones on every word.
    let n = core::cmp::min(
        BODY_WORDS as usize,
        (end as usize).saturating_sub(at as usize) / 8,
    );
    let base = at as usize;
    let mut i = 0;
    // As few values live in the loop as can be (BPF has ten registers; a
    // value more is spilled and reloaded on every word): the word before
    // word `i` is read again where a dot needs it, and after the loop.
    while i < n {
        let w = buf.word_at(base, i);
        let dot = zero_bytes(w ^ DOTS);
        // Most words hold no dot at all (base64 never does): only then is
        // the LF test needed.
        if dot != 0 {
            let bol = if i == 0 {
                bol
            } else {
                (buf.word_at(base, i - 1) >> 56) as u8 == b'\n'
            };
            let lf = zero_bytes(w ^ LFS);
            let line_start = (lf << 8) | if bol { 0x80 } else { 0 };
            if line_start & dot != 0 {
                break;
            }
        }
        i += 1;
    }
    if i == 0 {
        return (at, bol);
    }
    let last = buf.word_at(base, i - 1);
    (at + 8 * i as u32, (last >> 56) as u8 == b'\n')
}

/// Command arguments, SASL lines, header lines and the text of reply lines:
/// jumps to the next LF, the only byte that matters there (or as far as
/// [`find_flagged`] reaches). Returns the offset reached (`at` if it is a
/// LF).
#[inline(always)]
pub fn scan_to_lf<W: Words + ?Sized>(buf: &W, at: u32, end: u32) -> u32 {
    find_lf(buf, at, end).0
}

/// [`scan_to_lf`], and whether the offset reached holds a LF (it may
/// instead be where the words it may read ran out).
#[inline(always)]
pub fn find_lf<W: Words + ?Sized>(buf: &W, at: u32, end: u32) -> (u32, bool) {
    let (to, b) = find_flagged(buf, at, end, |x| zero_bytes(x ^ LFS));
    (to, b == b'\n' as u32)
}

/// [`find_flagged`] found no flagged byte before the words ran out.
pub const NO_STOP: u32 = 0x100;

/// Jumps to the first byte from `at` on that `flags` flags (as
/// [`zero_bytes`] flags: a byte-wise test of a word), or as far as
/// [`SKIP_WORDS`] whole words reach, and then a partial last word before
/// `end` (so up to one word more). Returns the offset reached (`at` if
/// that byte is at `at`) and the byte there, or [`NO_STOP`] if the words
/// ran out first.
///
/// A flag of [`zero_bytes`] that is not a real match can only come from a
/// borrow out of a matching byte below it; with the bytes before `at` left
/// out, the lowest such flag is at `at` itself, so the offset returned
/// never passes a byte that matters. The byte reported is read back, not
/// assumed: where it is such a false flag, at `at`, it is not a match.
#[inline(always)]
pub fn find_flagged<W: Words + ?Sized, F: Fn(u64) -> u64>(
    buf: &W,
    at: u32,
    end: u32,
    flags: F,
) -> (u32, u32) {
    let mut w = at & !7;
    // Ignore the bytes of the first word that come before `at`.
    let mut keep = u64::MAX << (8 * (at & 7));
    for _ in 0..SKIP_WORDS {
        if w + 8 > end {
            break;
        }
        let x = buf.word(w as usize);
        let m = flags(x) & keep;
        if m != 0 {
            return found(x, m, w, at);
        }
        w += 8;
        keep = u64::MAX;
    }
    // The last word, if it is partial (a line that ends a segment rarely
    // ends on a word boundary), with the bytes from `end` on left out (a
    // chunk's buffer holds stale bytes there; a caller's stop short of the
    // chunk's end, real ones). After the loop, not in it: a test in the
    // loop made the kernel's verifier walk 130k more instructions.
    if w < end && w + 8 > end {
        let x = buf.word(w as usize);
        let m = flags(x) & keep & ((1u64 << (8 * (end - w))) - 1);
        if m != 0 {
            return found(x, m, w, at);
        }
        w = end;
    }
    if w <= at {
        (at, NO_STOP)
    } else {
        (w, NO_STOP)
    }
}

/// [`find_flagged`]'s result where `m`, the flags of word `x` at offset
/// `w`, are not 0.
#[inline(always)]
fn found(x: u64, m: u64, w: u32, at: u32) -> (u32, u32) {
    let i = lowest_byte(m);
    let to = w + i;
    let b = ((x >> (8 * i)) & 0xff) as u32;
    if to <= at {
        (at, b)
    } else {
        (to, b)
    }
}

/// The bytes an address rule looks at (LF, `<`, `>`, `|`, backquote,
/// NUL), flagged as [`zero_bytes`] flags them, and a few more, which only
/// make a scan stop early (the caller reads the byte back, and steps it):
/// 0x02 and 0x08 with NUL and LF, `~` with the brackets and `|`. Three
/// tests a word instead of six: each pair or quadruple differs only in
/// bits that are cleared before the test.
#[inline(always)]
fn address_stops(x: u64) -> u64 {
    // 0x00, 0x02, 0x08, 0x0a.
    zero_bytes(x & !(ONES * 0x0a))
        // `<` 0x3c, `>` 0x3e, `|` 0x7c, `~` 0x7e.
        | zero_bytes((x ^ (ONES * b'<' as u64)) & !(ONES * 0x42))
        | zero_bytes(x ^ (ONES * b'`' as u64))
}

/// The address of a MAIL or RCPT: jumps to the next byte an address rule
/// looks at (see [`address_stops`]), as [`find_flagged`] does, and returns
/// the offset reached.
#[inline(always)]
pub fn scan_address<W: Words + ?Sized>(buf: &W, at: u32, end: u32) -> u32 {
    find_flagged(buf, at, end, address_stops).0
}

/// The rest of a command line: [`find_flagged`] to the next LF, or, if
/// `address` (the argument of an allowed MAIL or RCPT), to the next byte an
/// address rule looks at (see [`address_stops`]). One loop for both, the
/// choice a mask rather than a branch: a branch in the loop would have the
/// compiler make two loops of it, and the verifier walk both.
#[inline(always)]
pub fn scan_line<W: Words + ?Sized>(buf: &W, at: u32, end: u32, address: bool) -> (u32, u32) {
    let in_address = if address { u64::MAX } else { 0 };
    find_flagged(buf, at, end, |x| {
        zero_bytes(x ^ LFS) | (address_stops(x) & in_address)
    })
}

/// The eight bytes at buffer offset `at` (any alignment) as a
/// little-endian word, from the one or two aligned words that hold them.
/// `None` if those words do not both end by `end`. (Reading up to `end`
/// only would take more short lines whole, but it made the kernel's
/// verifier walk 115k more instructions.)
#[inline(always)]
pub fn bytes_at<W: Words + ?Sized>(buf: &W, at: u32, end: u32) -> Option<u64> {
    let a = at & !7;
    let k = 8 * (at & 7);
    if k == 0 {
        return if at + 8 <= end {
            Some(buf.word(a as usize))
        } else {
            None
        };
    }
    if a + 16 > end {
        return None;
    }
    Some((buf.word(a as usize) >> k) | (buf.word(a as usize + 8) << (64 - k)))
}

/// Bit 7 of every byte of `x` that is at least `c` (`1 <= c <= 0x80`),
/// exact for bytes below 0x80: the sum cannot carry into the next byte.
#[inline(always)]
const fn at_least(x: u64, c: u8) -> u64 {
    x.wrapping_add(ONES * (0x80 - c) as u64) & HIGH
}

/// Bit 7 of every byte of `x` (bytes below 0x80) in `lo..=hi`.
#[inline(always)]
const fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    at_least(x, lo) & !at_least(x, hi + 1)
}

/// Bit 7 of every ASCII letter of `x`, of either case: setting 0x20 maps
/// `A`-`Z` onto `a`-`z`, and nothing else into that range (bytes of 0x80
/// and above, for which the range test does not hold, are left out).
#[inline(always)]
fn letters(x: u64) -> u64 {
    in_range((x & !HIGH) | (ONES * 0x20), b'a', b'z') & !x & HIGH
}

/// Bit 7 of every verb character of `x` (`verbs::is_verb_char`: ASCII
/// letters, digits, `-` and `_`), given its [`letters`].
#[inline(always)]
fn verb_chars(x: u64, letter: u64) -> u64 {
    let y = x & !HIGH;
    (in_range(y, b'0', b'9') | in_range(y, b'-', b'-') | in_range(y, b'_', b'_')) & !x & HIGH
        | letter
}

/// Bit 7 of every byte of `x` that is not a verb character, exact for
/// every byte (those of 0x80 and above are flagged).
#[inline(always)]
fn non_verb_chars(x: u64) -> u64 {
    !verb_chars(x, letters(x)) & HIGH
}

/// A word of text from `at` on (an EHLO keyword): jumps to its first byte
/// that is not a verb character, as [`find_flagged`] does, and returns the
/// offset reached and the byte there ([`NO_STOP`] if the words ran out).
#[inline(always)]
pub fn scan_word<W: Words + ?Sized>(buf: &W, at: u32, end: u32) -> (u32, u32) {
    find_flagged(buf, at, end, non_verb_chars)
}

/// The first `len` bytes of `x` (verb characters; all eight from 8 on) as a
/// policy key: upper-cased and zero-padded, as `verbs::key_push` builds it
/// byte by byte.
#[inline(always)]
pub fn word_key(x: u64, len: u32) -> u64 {
    let letter = letters(x);
    let keep = if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    };
    x & !(letter >> 2) & keep
}

/// The verb at the start of `x` (eight bytes at a line start), a word at a
/// time: if `x` starts with 1 to 7 verb characters (`verbs::is_verb_char`)
/// followed by a byte that ends a verb (a LF or C-locale whitespace, as
/// `smtp::is_space`), their policy key (upper-cased, zero-padded, as
/// `verbs::key_push` builds it byte by byte) and their count. `None`
/// otherwise: an empty or longer verb, or one with a byte no verb has, is
/// left to the byte steps.
#[inline(always)]
pub fn verb_word(x: u64) -> Option<(u64, u32)> {
    // Bytes of 0x80 and above are neither verb characters nor delimiters;
    // the range tests below only hold for the others.
    let ascii = !x & HIGH;
    let y = x & !HIGH;
    let letter = letters(x);
    // Upper-case: every letter loses 0x20 (an upper-case one has none);
    // then keep the verb's first `len` bytes (all of them ASCII).
    let key = |len: u32| x & !(letter >> 2) & ((1u64 << (8 * len)) - 1);
    // Most verbs are letters only: if the first byte that is not a letter
    // ends a verb, the letters before it are the verb, and the byte classes
    // of the rest of the word do not matter. (Tested on its own byte: one
    // comparison chain instead of the word-wide tests below.)
    let stop = !letter & HIGH;
    if stop != 0 {
        let len = lowest_byte(stop);
        if len != 0 && is_delimiter((x >> (8 * len)) as u8) {
            return Some((key(len), len));
        }
    }
    let verb = verb_chars(x, letter);
    // \t, \n, \v, \f, \r and the space.
    let delim = (in_range(y, 0x09, 0x0d) | in_range(y, b' ', b' ')) & ascii;
    let stop = !verb & HIGH;
    if stop == 0 {
        return None;
    }
    let len = lowest_byte(stop);
    if len == 0 || (delim >> (8 * len)) & 0x80 == 0 {
        return None;
    }
    Some((key(len), len))
}

/// A byte that ends a verb: a LF or C-locale whitespace (`\t`, `\n`, `\v`,
/// `\f`, `\r`, the space), as `smtp::is_space` and the LF.
#[inline(always)]
const fn is_delimiter(b: u8) -> bool {
    b == b' ' || b.wrapping_sub(0x09) <= 0x0d - 0x09
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bytes_flags_every_zero_byte() {
        let w = u64::from_le_bytes(*b"ab\0cd\0\0e");
        let m = zero_bytes(w);
        for i in 0..8 {
            let flagged = (m >> (8 * i + 7)) & 1 == 1;
            assert_eq!(flagged, [2, 5, 6].contains(&i), "byte {i}");
        }
        assert_eq!(zero_bytes(u64::from_le_bytes(*b"abcdefgh")), 0);
    }

    #[test]
    fn lowest_byte_is_the_first_flagged() {
        for i in 0..8 {
            let m = 0x80u64 << (8 * i);
            assert_eq!(lowest_byte(m), i);
            assert_eq!(lowest_byte(m | 0x8000_0000_0000_0000), i);
        }
    }

    #[test]
    fn verb_word_is_the_key_byte_steps_build() {
        use crate::verbs::{is_verb_char, key_push};
        let delims = [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c];
        // Every byte in every position of a few words, against the
        // byte-at-a-time definition.
        let bases: [&[u8; 8]; 4] = [b"MAIL FRO", b"rcpt to:", b"x-f_0\r\n.", b"ABCDEFGH"];
        for base in bases {
            for pos in 0..8 {
                for b in 0..=255u8 {
                    let mut bytes = *base;
                    bytes[pos] = b;
                    let got = verb_word(u64::from_le_bytes(bytes));
                    let n = bytes.iter().take_while(|&&c| is_verb_char(c)).count();
                    let want = ((1..=7).contains(&n) && delims.contains(&bytes[n])).then(|| {
                        let key = (0..n).fold(0, |k, i| key_push(k, i, bytes[i]));
                        (key, n as u32)
                    });
                    assert_eq!(got, want, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn bytes_at_reads_across_words() {
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8;
        }
        for at in 0..24u32 {
            let want = u64::from_le_bytes(buf[at as usize..at as usize + 8].try_into().unwrap());
            let fits = if at % 8 == 0 {
                at + 8 <= 24
            } else {
                (at & !7) + 16 <= 24
            };
            assert_eq!(bytes_at(&buf[..], at, 24), fits.then_some(want), "at {at}");
        }
    }

    #[test]
    fn scan_to_lf_stops_at_the_lf_after_the_start() {
        let buf = *b"ab\ncdefghijklm\nopqrstuvwxyzABCDEFGHIJKLMNOP";
        // From 0 the first LF is at 2.
        assert_eq!(scan_to_lf(&buf[..], 0, buf.len() as u32), 2);
        // From 3 (inside the first word) the LF at 2 is behind: the next is 14.
        assert_eq!(scan_to_lf(&buf[..], 3, buf.len() as u32), 14);
        // At a LF it does not move: the caller steps it.
        assert_eq!(scan_to_lf(&buf[..], 14, buf.len() as u32), 14);
        // No LF: to the end, its last, partial word included (43 bytes).
        assert_eq!(scan_to_lf(&buf[..], 15, buf.len() as u32), 43);
        assert_eq!(find_lf(&buf[..], 15, buf.len() as u32), (43, false));
        // Past the end, whether it is in a word or on a word boundary.
        assert_eq!(find_lf(&buf[..20], 15, 20), (20, false));
        assert_eq!(find_lf(&buf[..16], 15, 16), (16, false));
        assert_eq!(find_lf(&buf[..15], 3, 15), (14, true));
        assert_eq!(find_lf(&buf[..], 3, buf.len() as u32), (14, true));
        // A 0x0b right after a LF that comes before the start is no LF.
        let vt = *b"abc\n\x0bdefghijklmno";
        assert_eq!(find_lf(&vt[..], 4, vt.len() as u32), (4, false));
    }
}
