//! Packet access: the only place that deals with the verifier's rules for
//! reading the frame. Everything above it reads like ordinary Rust.

use core::mem;

use crate::pkt::Packet;

/// Largest header offset the parser reads at; beyond it a read fails (the
/// packet counts as malformed). Offsets are also masked with it so that the
/// verifier sees a bounded packet-pointer offset.
pub const MAX_HDR_OFF: usize = 0x0fff;

/// A pointer to a `T` at `off` bytes into the frame, if the whole `T` lies
/// inside the linear part of the frame.
#[inline(always)]
pub fn ptr_at<P: Packet, T>(ctx: &P, off: usize) -> Option<*const T> {
    // `read_volatile` keeps LLVM from folding the mask into the later
    // comparison (which the verifier then cannot follow).
    if off > MAX_HDR_OFF {
        return None;
    }
    let off = unsafe { core::ptr::read_volatile(&off) } & MAX_HDR_OFF;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads a `T` (a plain-old-data header) at `off`.
#[inline(always)]
pub fn read<P: Packet, T: Copy>(ctx: &P, off: usize) -> Option<T> {
    ptr_at::<P, T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}
