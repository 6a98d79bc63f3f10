//! Types and logic shared by the kernel programs and the `inspector` tool.
//!
//! Everything here is `no_std` and allocation-free so that the eBPF crate can
//! use it; userspace enables the `user` feature to get `aya::Pod` impls for
//! the map types.
#![no_std]

pub mod config;
pub mod counters;
pub mod events;
pub mod fallback;
pub mod flow;
pub mod policy;
pub mod ports;
pub mod scan;
pub mod smtp;
pub mod verbs;

/// The slot of `x` in a direct-mapped cache of `slots` entries (a power of
/// two): the top bits of a Fibonacci hash, which mix every byte of `x`.
/// The kernel's per-CPU caches use it (policy entries, server-side checks);
/// it is here so that tests can tell which keys share a slot.
#[inline(always)]
pub const fn cache_slot(x: u64, slots: usize) -> usize {
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - slots.trailing_zeros())) as usize
}

/// `aya::Pod` for every type that crosses the kernel/user boundary.
#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made only of integers and arrays of
    // integers (no references, no enums with invalid bit patterns), so any
    // bytes the kernel writes are a valid value, and none has padding whose
    // content would matter.
    unsafe impl aya::Pod for crate::verbs::PolicyEntry {}
    unsafe impl aya::Pod for crate::config::Config {}
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::Flow {}
    unsafe impl aya::Pod for crate::events::Event {}
    unsafe impl aya::Pod for crate::fallback::Fallback {}
    unsafe impl aya::Pod for crate::fallback::Wake {}
}
