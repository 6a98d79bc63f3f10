//! Copying, zeroing and comparing plain structs a word at a time.
//!
//! A struct assignment, `Default::default()` or `zeroed()` of more than a
//! few words compiles to a call of the BPF `memmove` or `memset` that
//! compiler-builtins provides, which moves one byte per loop iteration: a
//! 48-byte parser state costs about 400 instructions, a 520-byte flow entry
//! over 2,500. These do the same with one load and store per word; the
//! accesses are volatile so that LLVM cannot turn the loops back into those
//! calls.

use core::ptr::{read_volatile, write_volatile};

use inspector_common::smtp::ClientState;

/// `*dst = *src`, for a `T` of whole 64-bit words (the parser states).
#[inline(always)]
pub fn copy<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let d = dst as *mut T as *mut u64;
    let s = src as *const T as *const u64;
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: both point to a whole, 8-aligned `T`, and word `i` lies
        // inside it; `T` is `Copy`, so its bytes may be copied as words.
        unsafe { write_volatile(d.add(i), read_volatile(s.add(i))) };
    }
}

/// All of `*dst` set to zero bytes, a 64-bit word at a time if `T` is made
/// of them, else a 32-bit one. The caller's `T` must be made of integers,
/// for which zero is a valid value (for the flow entry, also its default:
/// a test of `inspector_common::flow` checks it).
#[inline(always)]
pub fn zero<T: Copy>(dst: &mut T) {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    if size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8 {
        let d = dst as *mut T as *mut u64;
        for i in 0..size_of::<T>() / 8 {
            // SAFETY: `d` points to a whole, 8-aligned `T`, and word `i`
            // lies inside it.
            unsafe { write_volatile(d.add(i), 0) };
        }
    } else {
        let d = dst as *mut T as *mut u32;
        for i in 0..size_of::<T>() / 4 {
            // SAFETY: `d` points to a whole, 4-aligned `T`, and word `i`
            // lies inside it.
            unsafe { write_volatile(d.add(i), 0) };
        }
    }
}

/// `a == b` for two client parser states, with one branch instead of one
/// per field. Exact, because the struct has no padding (every byte is a
/// field, `_pad` included): equal fields mean equal words and the converse.
#[inline(always)]
pub fn same_client_state(a: &ClientState, b: &ClientState) -> bool {
    const { assert!(size_of::<ClientState>() == 48) };
    let a = a as *const ClientState as *const u64;
    let b = b as *const ClientState as *const u64;
    let mut diff = 0;
    for i in 0..size_of::<ClientState>() / 8 {
        // SAFETY: both point to a whole, 8-aligned `ClientState`, and word
        // `i` lies inside it.
        diff |= unsafe { read_volatile(a.add(i)) ^ read_volatile(b.add(i)) };
    }
    diff == 0
}
