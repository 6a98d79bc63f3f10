//! Masking: the spans the parser marks are collected per chunk, turned into
//! `X` bytes in the payload buffer (accumulating the checksum change as it
//! goes), written back into the packet, and the TCP checksum is updated
//! once per segment (`csum.rs` has the arithmetic).

use core::ffi::c_void;

use inspector_common::counters::Counter;

use crate::{
    access::{bounded, masked},
    csum,
    packet::Packet,
    report::{count, count_n},
    workarea::{for_each, from_ctx, MaskList, WorkArea, BUF, MAX_MASKS},
};

/// Records that segment bytes `[from, to)` must be masked. Spans arrive in
/// order; a span that continues the previous one extends it.
#[inline(always)]
pub fn add(m: &mut MaskList, from: u32, to: u32) {
    let n = m.n as usize;
    if n > 0 {
        let last = &mut m.spans[masked(n - 1, MAX_MASKS)];
        if last.1 >= from {
            if to > last.1 {
                last.1 = to;
            }
            return;
        }
    }
    if n >= MAX_MASKS {
        m.overflow = 1;
        return;
    }
    m.spans[masked(n, MAX_MASKS)] = (from, to);
    m.n += 1;
}

/// One masked byte per call: walks the recorded spans, writes `X` into the
/// buffer and accounts for the checksum. Kept apart from the parser
/// callback so that each callback stays small for the verifier.
unsafe extern "C" fn mask_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `apply` runs this callback through `for_each`.
    let Some(w) = (unsafe { from_ctx(ctx) }) else {
        return 1;
    };
    let m = &mut w.masks;
    let ri = m.idx as usize;
    if ri >= m.n as usize {
        return 1;
    }
    let (from, to) = m.spans[masked(ri, MAX_MASKS)];
    let p = if m.pos < from { from } else { m.pos };
    if p >= to {
        m.idx += 1;
        return 0;
    }
    m.pos = p + 1;
    let rel = p - w.parser.base;
    let idx = masked(rel as usize, BUF);
    let old = w.payload[idx];
    if old != b'X' {
        w.payload[idx] = b'X';
        m.csum_acc += csum::byte_change(p, old, b'X');
        m.masked_bytes += 1;
        if rel < m.dirty_lo {
            m.dirty_lo = rel;
        }
        if rel + 1 > m.dirty_hi {
            m.dirty_hi = rel + 1;
        }
    }
    0
}

/// Applies the spans recorded for the chunk in the payload buffer and
/// writes the changed bytes back into the packet (not in monitor mode).
#[inline(always)]
pub fn apply<P: Packet>(p: &P, w: &mut WorkArea) {
    if w.masks.n == 0 {
        return;
    }
    let m = &mut w.masks;
    m.idx = 0;
    m.pos = 0;
    m.dirty_lo = u32::MAX;
    m.dirty_hi = 0;
    let before = m.masked_bytes;
    // Each call masks a byte or moves to the next span.
    let calls = (w.parser.end - w.parser.base) + MAX_MASKS as u32;
    for_each(calls, mask_step, w);
    if w.parser.report != 0 {
        count_n(Counter::BytesMasked, (w.masks.masked_bytes - before) as u64);
    }
    w.masks.n = 0;
    if w.packet.monitor != 0 {
        return;
    }
    // lo < BUF and n < BUF, and the buffer is 2 * BUF long (`access.rs`).
    let lo = bounded(w.masks.dirty_lo as usize, BUF - 1);
    let hi = w.masks.dirty_hi as usize;
    if hi <= lo || hi > BUF {
        return;
    }
    let n = bounded(hi - lo, BUF - 1);
    if n == 0 {
        return;
    }
    let off = w.packet.payload_off + w.parser.base + lo as u32;
    // SAFETY: `lo + n < 2 * BUF`, inside the payload buffer.
    let src = unsafe { w.payload.as_mut_ptr().add(lo) };
    if !p.store(off, src, n as u32) {
        w.packet.load_failed = 1;
    }
}

/// Updates the TCP checksum for every byte masked in the segment.
#[inline(always)]
pub fn fix_checksum<P: Packet>(p: &P, w: &WorkArea) {
    let t = &w.packet.tcp;
    if !p.fix_checksum(t.l4_off, t.pseudo_sum(), w.masks.csum_acc) {
        count(Counter::ChecksumPartial);
    }
}
