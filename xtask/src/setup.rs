//! Idempotent installation of the build and test dependencies.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::{output, run as exec, step};

/// Debian packages the tests, demo and benchmarks use.
/// postfix brings smtp-source/smtp-sink; python3-aiosmtpd records what a
/// server receives; swaks is a real SMTP client.
const APT_PACKAGES: &[&str] = &[
    "postfix",
    "swaks",
    // swaks needs it for IPv6 (it names it as a recommendation only, so
    // --no-install-recommends leaves it out).
    "libio-socket-inet6-perl",
    "python3-aiosmtpd",
    "python3-scapy",
    "ethtool",
    "tcpdump",
    "bpftool",
    "iproute2",
    "iptables",
    "haproxy",
    "util-linux",
    "procps",
    "curl",
    // systemd-analyze (security, verify) for the unit's tests, and man for
    // rendering the generated man page.
    "systemd",
    "man-db",
    // The Prometheus project's own text-format parser, which the metrics
    // test feeds the exposition to.
    "python3-prometheus-client",
];

pub fn run() -> Result<()> {
    step("setup: checking the toolchain and packages (installs only what is missing)");
    nightly()?;
    bpf_linker()?;
    apt()?;
    exim()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "-c",
            "rust-src,clippy,rustfmt",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    for comp in ["rust-src", "clippy", "rustfmt"] {
        if !installed.lines().any(|l| l.starts_with(comp)) {
            eprintln!("setup: adding {comp} to the nightly toolchain");
            exec(Command::new("rustup").args([
                "component",
                "add",
                comp,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    Ok(())
}

/// The nightly's sysroot and the path of its shared libLLVM.
fn nightly_llvm() -> Result<(PathBuf, PathBuf, u32)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let mut found = None;
    for e in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        // libLLVM.so.22.1-rust-1.97.0-nightly: the major comes after ".so."
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            if let Some(major) = rest.split('.').next().and_then(|m| m.parse().ok()) {
                found = Some((lib.join(&name), major));
            }
        }
    }
    let Some((so, major)) = found else {
        bail!(
            "the nightly toolchain in {} ships no libLLVM.so.*",
            lib.display()
        );
    };
    Ok((lib, so, major))
}

fn bpf_linker() -> Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    let (lib, so, major) = nightly_llvm()?;
    eprintln!(
        "setup: installing bpf-linker against the nightly's LLVM {major} ({})",
        so.display()
    );
    let prefix = std::env::temp_dir().join(format!("inspector-llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&so, &link)?;
    // The rpath lets bpf-linker find libLLVM at run time without
    // LD_LIBRARY_PATH.
    exec(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            )
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                "0.13.0",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )
}

/// Debian packages unpacked, not installed: Exim 4 (and the one library
/// it needs that Postfix's dependencies do not bring) is the client MTA of
/// the end-to-end tests, beside Postfix, which installing it would remove
/// (both are the system's mail-transport-agent).
const UNPACKED: &[&str] = &["exim4-daemon-light", "libidn12"];

/// Unpacks [`UNPACKED`] into `<target>/exim` (where `inspector_testkit::
/// exim` looks), unless it is there.
fn exim() -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::util::root().join("target"));
    let dest = target.join("exim");
    if dest.join("usr/sbin/exim4").exists() {
        return Ok(());
    }
    eprintln!(
        "setup: unpacking {} into {}",
        UNPACKED.join(" "),
        dest.display()
    );
    let debs = target.join("exim-debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let download = || {
        let mut c = Command::new("apt-get");
        c.current_dir(&debs).arg("download").args(UNPACKED);
        c
    };
    if exec(&mut download()).is_err() {
        // The package lists may be missing or stale.
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        exec(&mut download())?;
    }
    for entry in std::fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            exec(Command::new("dpkg").arg("-x").arg(&deb).arg(&dest))?;
        }
    }
    if !dest.join("usr/sbin/exim4").exists() {
        bail!("no usr/sbin/exim4 in {} after unpacking", dest.display());
    }
    Ok(())
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    let as_root = rustix::process::geteuid().is_root();
    let apt = |args: &[&str]| {
        let mut c = if as_root {
            Command::new("apt-get")
        } else {
            let mut s = Command::new("sudo");
            s.arg("apt-get");
            s
        };
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    exec(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    exec(&mut apt(&args))
}
