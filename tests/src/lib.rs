//! The inspector's kernel, command-line and end-to-end tests.
//!
//! The scaffolding (frames, the BPF_PROG_TEST_RUN runner, namespace
//! gateways, processes, the recording server, Postfix, Exim, the scripted
//! client)
//! is the `inspector-testkit` crate, shared with `cargo xtask bench` and
//! `cargo xtask demo`; it is re-exported here under the paths the tests use.
//! What needs `inspector-userspace` (the embedded object, its loader) stays
//! in this crate:
//!
//! - [`xdp`]: the embedded XDP program loaded in this process and run on
//!   frames with BPF_PROG_TEST_RUN.
//! - [`kernel`]: the XDP or TC program driven through whole TCP sessions
//!   with BPF_PROG_TEST_RUN, with every counter.
//!
//! Everything here needs root, and the tests run one at a time
//! (`--test-threads=1`).

pub mod kernel;
pub mod xdp;

pub use inspector_testkit::{
    client, exim, frame, from_hex, inspector, inspector_bin, netns, owner_pid, pid_alive, postfix,
    proc, remove_stale_once, require_root, sha256_hex, smtpd, temp_dir, unique_id, wait_until,
    workspace_root, Counts, Inspector, NetNs, Offloads, RecordingSmtpd, Testbed, NAME_PREFIX,
};

/// `attach` must have failed with [`assert_one_line_error`]'s one line
/// mentioning every string of `mentions`; if it started, it is stopped.
pub fn assert_attach_failed(
    what: &str,
    r: Result<Inspector, inspector::AttachFailed>,
    mentions: &[&str],
) {
    assert_attach_ended(what, 1, r, mentions)
}

/// An attach whose input the validator refuses: exit 2 (README "Exit
/// status"), one line on stderr naming every string of `mentions`.
pub fn assert_attach_refused(
    what: &str,
    r: Result<Inspector, inspector::AttachFailed>,
    mentions: &[&str],
) {
    assert_attach_ended(what, 2, r, mentions)
}

fn assert_attach_ended(
    what: &str,
    want: i32,
    r: Result<Inspector, inspector::AttachFailed>,
    mentions: &[&str],
) {
    match r {
        Ok(mut i) => {
            let stderr = i.stderr();
            let _ = i.stop_with(rustix::process::Signal::INT.as_raw());
            panic!("{what}: attach succeeded but should have ended with status {want}; stderr:\n{stderr}");
        }
        Err(f) => assert_one_line_error_status(what, want, f.status.code(), &f.stderr, mentions),
    }
}

/// Exit status 1 and exactly one line on stderr, `inspector: error: ...`,
/// containing every string of `mentions`.
pub fn assert_one_line_error(what: &str, code: Option<i32>, stderr: &str, mentions: &[&str]) {
    assert_one_line_error_status(what, 1, code, stderr, mentions)
}

/// Exit status 2 (refused input: README "Exit status") and exactly one
/// line on stderr naming every string of `mentions`.
pub fn assert_one_line_refusal(what: &str, code: Option<i32>, stderr: &str, mentions: &[&str]) {
    assert_one_line_error_status(what, 2, code, stderr, mentions)
}

/// Exit status `want` and exactly one line on stderr, `inspector: error:
/// ...`, containing every string of `mentions`.
pub fn assert_one_line_error_status(
    what: &str,
    want: i32,
    code: Option<i32>,
    stderr: &str,
    mentions: &[&str],
) {
    assert_eq!(code, Some(want), "{what}: exit status; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("inspector: error: "),
        "{what}: stderr does not start with `inspector: error: `:\n{stderr}"
    );
    for m in mentions {
        assert!(
            lines[0].contains(m),
            "{what}: the error does not mention `{m}`:\n{stderr}"
        );
    }
}
