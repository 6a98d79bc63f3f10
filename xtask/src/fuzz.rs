//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (a cargo-fuzz crate
//! outside the workspace) with libFuzzer on the nightly toolchain, installing
//! cargo-fuzz first if it is missing: `parser` (the parser's invariants),
//! `fast_path` (the client's word-at-a-time fast paths against
//! byte-at-a-time stepping) and `reply_fast_path` (the same for the
//! server's replies).

use std::process::Command;

use anyhow::Result;

use crate::util;

/// `cargo` (no toolchain override) with the outer cargo's environment
/// removed, as [`util::nightly_cargo`] does.
fn plain_cargo() -> Command {
    let mut c = Command::new("cargo");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") || k.starts_with("RUSTC") || k == "RUSTUP_TOOLCHAIN" {
            c.env_remove(&*k);
        }
    }
    c
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let dir = util::root().join("fuzz");
    if util::output(util::nightly_cargo(&dir).args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    util::step("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    util::run(plain_cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// The fuzz targets, each run for an equal share of the time.
const TARGETS: [&str; 3] = ["parser", "fast_path", "reply_fast_path"];

/// Fuzzes the shared SMTP parser for `seconds` seconds in all, split evenly
/// between the targets. Fails if libFuzzer finds a crash (its input is left
/// in `fuzz/artifacts/<target>/`).
pub fn run(seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let dir = util::root().join("fuzz");
    let each = (seconds / TARGETS.len() as u64).max(1);
    for target in TARGETS {
        util::step(&format!(
            "fuzzing the SMTP parser: target {target}, {each} s"
        ));
        let mut cmd = util::nightly_cargo(&dir);
        cmd.args(["fuzz", "run", target, "--"]);
        cmd.arg(format!("-max_total_time={each}"));
        if dir.join("parser.dict").exists() {
            cmd.arg("-dict=parser.dict");
        }
        util::run(&mut cmd)?;
    }
    Ok(())
}
