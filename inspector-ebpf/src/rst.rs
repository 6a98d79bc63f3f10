//! Resetting a flow the inspector cannot normalise (the last resort of
//! docs/contract.md §5).
//!
//! The first time, the client's segment becomes a bare RST|ACK to the
//! server at the segment's own sequence number, which the server expects,
//! so it accepts the reset. Later client segments of the flow are turned
//! around into a RST|ACK to the client, sent back out of the interface they
//! came in on, so the client stops at its next retransmission instead of
//! retrying for minutes.
//!
//! The headers are edited in the work area's header copy (plain indexed
//! Rust, every index masked into it, see `access.rs`), copied in and out
//! with the load/store helpers, not through packet pointers.

use crate::{
    access::{bounded, masked},
    csum,
    packet::Packet,
    workarea::{WorkArea, HDR_MAX},
};

const RST_ACK: u8 = 0x14;

type Hdr = [u8; 2 * HDR_MAX];

/// Index `at` of the header copy.
#[inline(always)]
fn ix(at: usize) -> usize {
    masked(at, HDR_MAX)
}

#[inline(always)]
fn get16(h: &Hdr, at: usize) -> u16 {
    u16::from_be_bytes([h[ix(at)], h[ix(at + 1)]])
}

#[inline(always)]
fn put16(h: &mut Hdr, at: usize, v: u16) {
    let b = v.to_be_bytes();
    h[ix(at)] = b[0];
    h[ix(at + 1)] = b[1];
}

#[inline(always)]
fn swap(h: &mut Hdr, a: usize, b: usize, n: usize) {
    for i in 0..16 {
        if i >= n {
            break;
        }
        let (x, y) = (h[ix(a + i)], h[ix(b + i)]);
        h[ix(a + i)] = y;
        h[ix(b + i)] = x;
    }
}

/// Rewrites the client's segment into a RST|ACK, toward the server
/// (`toward_client` false: the caller passes it on) or back to the client
/// (the caller bounces it). False if it could not be done.
#[inline(always)]
pub fn rewrite<P: Packet>(p: &P, w: &mut WorkArea, toward_client: bool) -> bool {
    let (t, h) = (&w.packet.tcp, &mut w.hdr);
    let hlen = t.payload_off;
    if hlen >= HDR_MAX || t.l4_off + 20 > hlen {
        return false;
    }
    let n = bounded(hlen, HDR_MAX - 1);
    if n == 0 || !p.load(0, h.as_mut_ptr(), n as u32) {
        return false;
    }
    let (l3, l4) = (t.l3_off, t.l4_off);
    // A locally sent packet whose checksum the device completes keeps a
    // pseudo-header sum; a turned-around one gets no offload: full sum.
    let partial = !toward_client && get16(h, l4 + 16) == t.pseudo_sum();
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
    h[ix(l4 + 13)] = RST_ACK;
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
