//! The eBPF object with the benchmark baselines (`bench_pass`,
//! `bench_parse`), built with the eBPF crate's `bench` feature into a target
//! folder of its own. The object `inspector` embeds (built by
//! `inspector-userspace/build.rs`) does not carry them.

use std::path::PathBuf;

use anyhow::Result;

use crate::util;

/// Builds the eBPF crate with `--features bench` and returns the object's
/// path.
pub fn bench_object() -> Result<PathBuf> {
    let root = util::root();
    let target = root.join("target/ebpf-bench");
    util::step("building the eBPF object with the benchmark programs (--features bench)");
    util::run(
        util::nightly_cargo(&root.join("inspector-ebpf"))
            .args(["build", "--release", "--locked", "--features", "bench"])
            .arg("--target-dir")
            .arg(&target),
    )?;
    Ok(target.join("bpfel-unknown-none/release/inspector"))
}
