//! The `inspector` tool as a library: loading and attaching the embedded eBPF
//! object, settings and their checks, pin-dir and link management, and
//! reading counters. The binary (`main.rs` dispatching to `cmd/`, with the
//! command line in `cli.rs`) is a thin layer on top; the end-to-end and
//! BPF_PROG_TEST_RUN tests use these functions directly.

pub mod events;
pub mod fallback;
pub mod flows;
pub mod hooks;
pub mod journal;
pub mod links;
pub mod loader;
pub mod metrics;
pub mod notify;
pub mod permanent;
pub mod pin;
pub mod privilege;
pub mod settings;
pub mod stats;
pub mod status;
