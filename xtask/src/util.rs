//! Small helpers for running commands and printing steps.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
/// The workspace root (the test kit's: it lives one level below it too).
pub use inspector_testkit::workspace_root as root;

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// `cargo` of the toolchain running xtask, in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo +nightly` in `dir`, with the outer cargo's environment removed.
pub fn nightly_cargo(dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") || k.starts_with("RUSTC") || k == "RUSTUP_TOOLCHAIN" {
            c.env_remove(&*k);
        }
    }
    c
}

/// Runs a command, inheriting stdio; fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
