//! Word-at-a-time fast paths of the client parser.
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
//! byte-at-a-time stepping ([`crate::smtp::feed_client_bytewise`]).
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

/// Words a body scan looks at per call.
pub const BODY_WORDS: u32 = 32;
/// Words an argument scan looks at per call.
pub const SKIP_WORDS: u32 = 8;

const LFS: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const DOTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;

/// A chunk buffer read a word at a time.
pub trait Words {
    /// The little-endian 64-bit word at buffer offset `at`. Callers only
    /// ask for `at` a multiple of 8 with `at + 8` inside the scanned range.
    fn word(&self, at: u32) -> u64;
}

/// Userspace: a chunk is a slice.
impl Words for [u8] {
    #[inline(always)]
    fn word(&self, at: u32) -> u64 {
        let at = at as usize;
        let mut w = [0u8; 8];
        w.copy_from_slice(&self[at..at + 8]);
        u64::from_le_bytes(w)
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
    let mut m = m & m.wrapping_neg();
    let mut i = 0;
    if m & 0xffff_ffff == 0 {
        i += 4;
        m >>= 32;
    }
    if m & 0xffff == 0 {
        i += 2;
        m >>= 16;
    }
    if m & 0xff == 0 {
        i += 1;
    }
    i
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
    let mut rel = at;
    let mut bol = bol;
    for _ in 0..BODY_WORDS {
        if rel + 8 > end {
            break;
        }
        let w = buf.word(rel);
        let dot = zero_bytes(w ^ DOTS);
        // Most words hold no dot at all (base64 never does): only then is
        // the LF test needed.
        if dot != 0 {
            let lf = zero_bytes(w ^ LFS);
            let line_start = (lf << 8) | if bol { 0x80 } else { 0 };
            if line_start & dot != 0 {
                break;
            }
        }
        bol = (w >> 56) as u8 == b'\n';
        rel += 8;
    }
    (rel, bol)
}

/// Command arguments and SASL lines: jumps to the next LF (or as far as
/// [`SKIP_WORDS`] words reach), the only byte that matters there. Returns
/// the offset reached (`at` if it is a LF).
#[inline(always)]
pub fn scan_to_lf<W: Words + ?Sized>(buf: &W, at: u32, end: u32) -> u32 {
    let mut w = at & !7;
    // Ignore the bytes of the first word that come before `at`.
    let mut keep = u64::MAX << (8 * (at & 7));
    for _ in 0..SKIP_WORDS {
        if w + 8 > end {
            break;
        }
        let lf = zero_bytes(buf.word(w) ^ LFS) & keep;
        if lf != 0 {
            let to = w + lowest_byte(lf);
            return if to <= at { at } else { to };
        }
        w += 8;
        keep = u64::MAX;
    }
    if w <= at {
        at
    } else {
        w
    }
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
    fn scan_to_lf_stops_at_the_lf_after_the_start() {
        let buf = *b"ab\ncdefghijklm\nopqrstuvwxyzABCDEFGHIJKLMNOP";
        // From 0 the first LF is at 2.
        assert_eq!(scan_to_lf(&buf[..], 0, buf.len() as u32), 2);
        // From 3 (inside the first word) the LF at 2 is behind: the next is 14.
        assert_eq!(scan_to_lf(&buf[..], 3, buf.len() as u32), 14);
        // At a LF it does not move: the caller steps it.
        assert_eq!(scan_to_lf(&buf[..], 14, buf.len() as u32), 14);
        // No LF: as far as whole words reach.
        assert_eq!(scan_to_lf(&buf[..], 15, buf.len() as u32), 40);
    }
}
