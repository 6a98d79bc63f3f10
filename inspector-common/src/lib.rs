//! Types and logic shared by the kernel programs and the `inspector` tool.
//!
//! Everything here is `no_std` and allocation-free so that the eBPF crate can
//! use it; userspace enables the `user` feature to get `aya::Pod` impls for
//! the map types.
#![no_std]

pub mod counters;
pub mod policy;
pub mod ports;
pub mod smtp;
pub mod verbs;
