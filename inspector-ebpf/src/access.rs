//! Bounds the verifier can follow. Every trick the kernel code plays to get
//! past the verifier lives here, and is explained here once; the rest of the
//! crate reads like ordinary Rust.
//!
//! The verifier tracks the range of every register on its own, and refuses a
//! memory access it cannot prove in bounds. Three idioms keep its proofs
//! within reach:
//!
//! - **An opaque read, then the check or mask** ([`opaque`], [`bounded`]).
//!   LLVM drops a range check it can prove redundant, or folds a mask into a
//!   later comparison; the verifier, which does not reason like LLVM, then
//!   sees an unbounded register ("R4 min value is negative, either use
//!   unsigned or 'var &= const'"). Reading the value back through
//!   `read_volatile`, a load LLVM may not see through, keeps the check or the
//!   mask that follows it in the program.
//! - **Index masking** ([`masked`]): an index into an array of power-of-two
//!   length is masked with the length minus one, so every access is in
//!   bounds whatever the verifier knows about the index; callers keep the
//!   index below the length anyway, so the mask changes nothing.
//! - **Buffers twice as long as used**: a copy into or out of a buffer
//!   starts at one bounded offset and has another bounded length; the
//!   verifier cannot relate the two, so their sum must fit: the payload
//!   buffer and the header copy of the work area are twice their largest
//!   use.
//!
//! Direct packet access goes through [`ptr_at`] only (bounded offset,
//! checked against the end of the linear part); payload bytes are copied
//! with the load/store helpers instead (`packet.rs`), which also reach the
//! fragments of a multi-buffer frame.

use core::mem;

use inspector_common::scan::{Words, BODY_WORDS, CHUNK};

/// Largest header offset the parser reads at; beyond it a read fails (the
/// packet counts as malformed).
pub const MAX_HDR_OFF: usize = 0x0fff;

/// `v`, read back so that LLVM cannot carry what it knows about it into
/// the checks that follow (see the module documentation).
#[inline(always)]
pub fn opaque<T: Copy>(v: T) -> T {
    // SAFETY: `&v` is a valid, aligned reference to a local.
    unsafe { core::ptr::read_volatile(&v) }
}

/// `v & mask`, with the mask kept in the program (see [`opaque`]).
#[inline(always)]
pub fn bounded(v: usize, mask: usize) -> usize {
    opaque(v) & mask
}

/// `i` masked into an array of `len` elements, `len` a power of two.
#[inline(always)]
pub const fn masked(i: usize, len: usize) -> usize {
    i & (len - 1)
}

/// A pointer to a `T` at `off` bytes into the linear part of a frame that
/// spans `[data, data_end)`, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*const T> {
    if off > MAX_HDR_OFF {
        return None;
    }
    let off = bounded(off, MAX_HDR_OFF);
    if data + off + mem::size_of::<T>() > data_end {
        return None;
    }
    Some((data + off) as *const T)
}

/// The payload buffer of the work area (see `workarea.rs`): a chunk of
/// `CHUNK` bytes at its start, twice as long for the verifier's sake.
pub type PayloadBytes = [u8; 2 * CHUNK];

/// The byte at offset `i` of the chunk.
#[inline(always)]
pub fn chunk_byte(buf: &PayloadBytes, i: u32) -> u8 {
    buf[masked(i as usize, CHUNK)]
}

/// The payload buffer as the word-at-a-time fast paths of
/// `inspector_common::scan` read it.
pub struct ChunkWords<'a>(pub &'a PayloadBytes);

const _: () = assert!(
    8 * BODY_WORDS as usize <= CHUNK,
    "word_at reads past the buffer"
);

impl Words for ChunkWords<'_> {
    /// The aligned little-endian word at offset `at` (a multiple of 8
    /// below `CHUNK`, which the mask leaves as it is).
    #[inline(always)]
    fn word(&self, at: usize) -> u64 {
        let i = at & (CHUNK - 8);
        // SAFETY: `i + 8 <= CHUNK` is inside the buffer, and `i` is a
        // multiple of 8 from its start, which is 8-aligned (the first field
        // of the work area, a map value).
        u64::from_le(unsafe { (self.0.as_ptr().add(i) as *const u64).read() })
    }
    /// As `word(base + 8 * i)`, with `base` and `i` bounded apart: `base`
    /// below `CHUNK` (the same mask for every word of a run, which the
    /// compiler takes out of the loop) and `i` below `BODY_WORDS`, so the
    /// word ends at most `8 * BODY_WORDS` past `CHUNK`, inside the buffer
    /// (twice `CHUNK` long).
    #[inline(always)]
    fn word_at(&self, base: usize, i: usize) -> u64 {
        let base = base & (CHUNK - 8);
        let i = masked(i, BODY_WORDS as usize);
        // SAFETY: as in `word`: `base + 8 * i + 8 <= CHUNK + 8 * BODY_WORDS
        // <= 2 * CHUNK`, 8-aligned from the buffer's 8-aligned start.
        u64::from_le(unsafe { (self.0.as_ptr().add(base + 8 * i) as *const u64).read() })
    }
    #[inline(always)]
    fn byte(&self, at: usize) -> u8 {
        chunk_byte(self.0, at as u32)
    }
}
