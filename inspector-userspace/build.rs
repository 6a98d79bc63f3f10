//! Builds the eBPF crate (nightly, bpfel-unknown-none, build-std) and leaves
//! the object where `src/lib.rs` embeds it, so that the `inspector` binary is
//! self-contained.
//!
//! The toolchain it needs (nightly rust-src and a bpf-linker built against
//! the nightly's own LLVM) is installed by `cargo xtask setup`, which
//! `cargo xtask demo|test|build` run first.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("inspector-ebpf");
    for p in [
        "inspector-ebpf/src",
        "inspector-ebpf/Cargo.toml",
        "inspector-ebpf/Cargo.lock",
        "inspector-ebpf/.cargo/config.toml",
        "inspector-common/src",
        "inspector-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=INSPECTOR_EBPF_PROFILE");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // One eBPF target dir for every host profile: the object does not depend
    // on how the host code is built, so it is compiled once.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("ebpf");

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&ebpf_dir);
    // The outer (stable) build exports variables that must not leak into the
    // nightly build of another target.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.args(["+nightly", "build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not run `cargo +nightly` to build the eBPF program: {e}; run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!(
            "building the eBPF program failed (see above). If the nightly toolchain, its rust-src \
             or bpf-linker is missing, `cargo xtask setup` installs them."
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/inspector");
    copy(&obj, &out_dir.join("inspector.bpf.o"));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
