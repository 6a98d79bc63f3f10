//! Resetting a flow the inspector cannot normalise (SPEC 5's last resort).
//!
//! The first time, the client's segment becomes a bare RST|ACK to the
//! server at the segment's own sequence number, which the server expects,
//! so it accepts the reset. Later client segments of the flow are turned
//! around into a RST|ACK to the client, sent back out of the interface they
//! came in on, so the client stops at its next retransmission instead of
//! retrying for minutes.
//!
//! The headers are edited in the scratch area (plain indexed Rust, copied in
//! and out with the load/store helpers), not through packet pointers.

use crate::{csum, pkt::Packet, scratch::Scratch};

const RST_ACK: u8 = 0x14;
/// Headers longer than this (many IPv6 extension headers) are not
/// rewritten; the segment is dropped instead.
pub const HDR_MAX: usize = 256;
const M: usize = HDR_MAX - 1;

#[inline(always)]
fn get16(h: &[u8; 2 * HDR_MAX], at: usize) -> u16 {
    u16::from_be_bytes([h[at & M], h[(at + 1) & M]])
}

#[inline(always)]
fn put16(h: &mut [u8; 2 * HDR_MAX], at: usize, v: u16) {
    let b = v.to_be_bytes();
    h[at & M] = b[0];
    h[(at + 1) & M] = b[1];
}

#[inline(always)]
fn swap(h: &mut [u8; 2 * HDR_MAX], a: usize, b: usize, n: usize) {
    for i in 0..16 {
        if i >= n {
            break;
        }
        let (x, y) = (h[(a + i) & M], h[(b + i) & M]);
        h[(a + i) & M] = y;
        h[(b + i) & M] = x;
    }
}

/// Rewrites the client's segment into a RST|ACK, toward the server
/// (`toward_client` false: the caller passes it on) or back to the client
/// (the caller bounces it). False if it could not be done.
#[inline(always)]
pub fn rewrite<P: Packet>(p: &P, s: &mut Scratch, toward_client: bool) -> bool {
    let Scratch { tcp: t, hdr: h, .. } = s;
    let hlen = t.payload_off;
    if hlen >= HDR_MAX || t.l4_off + 20 > hlen {
        return false;
    }
    let n = unsafe { core::ptr::read_volatile(&hlen) } & M;
    if n == 0 || !p.load(0, h.as_mut_ptr(), n as u32) {
        return false;
    }
    let (l3, l4) = (t.l3_off, t.l4_off);
    // A locally sent packet whose checksum the device completes keeps a
    // pseudo-header sum; a turned-around one gets no offload: full sum.
    let partial = !toward_client && get16(h, l4 + 16) == csum::pseudo_header(t);
    if toward_client {
        let seq = (get16(h, l4 + 4) as u32) << 16 | get16(h, l4 + 6) as u32;
        let ack = (get16(h, l4 + 8) as u32) << 16 | get16(h, l4 + 10) as u32;
        let (a, len) = if t.is_v6 { (8, 16) } else { (12, 4) };
        swap(h, 0, 6, 6);
        swap(h, l3 + a, l3 + a + len, len);
        swap(h, l4, l4 + 2, 2);
        let new_ack = seq.wrapping_add(t.payload_len as u32);
        put16(h, l4 + 4, (ack >> 16) as u16);
        put16(h, l4 + 6, ack as u16);
        put16(h, l4 + 8, (new_ack >> 16) as u16);
        put16(h, l4 + 10, new_ack as u16);
    }
    // IP length: the headers only.
    if t.is_v6 {
        put16(h, l3 + 4, (hlen - l3 - 40) as u16);
    } else {
        let old = get16(h, l3 + 2);
        let new = (hlen - l3) as u16;
        put16(h, l3 + 2, new);
        let check = get16(h, l3 + 10);
        put16(
            h,
            l3 + 10,
            csum::update(check, (!(old as u32) & 0xffff) + new as u32),
        );
    }
    h[(l4 + 13) & M] = RST_ACK;
    let hdr = hlen - l4;
    let pseudo = csum::pseudo(&t.src, &t.dst, t.is_v6, hdr);
    let check = if partial {
        pseudo
    } else {
        put16(h, l4 + 16, 0);
        let mut sum = pseudo as u32;
        for i in 0..30 {
            if 2 * i >= hdr {
                break;
            }
            sum += get16(h, l4 + 2 * i) as u32;
        }
        !csum::fold(sum)
    };
    put16(h, l4 + 16, check);
    if !p.trim_to(hlen as u32) {
        return false;
    }
    p.store(0, h.as_mut_ptr(), n as u32)
}
