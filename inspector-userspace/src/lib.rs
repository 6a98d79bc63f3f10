//! The `inspector` tool as a library: loading and attaching the embedded eBPF
//! object, pin-dir management, and reading counters. `main.rs` is the CLI;
//! the end-to-end and BPF_PROG_TEST_RUN tests use these functions directly.

pub mod events;
pub mod flows;
pub mod links;
pub mod loader;
pub mod metrics;
pub mod pin;
pub mod privilege;
pub mod settings;
pub mod stats;
pub mod status;
