//! Project tasks: `cargo xtask setup|build|test|demo`.
//!
//! Every task first runs `setup`, which installs (idempotently, saying what
//! it does) what a fresh machine lacks: the nightly's rust-src, bpf-linker
//! built against the nightly's own libLLVM, and the Debian packages that the
//! tests and the demo use.

mod bench;
mod demo;
mod ebpf;
mod fuzz;
mod setup;
mod util;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Build, set-up, test and demo tasks for inspector"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the `inspector` binary (release) with its embedded eBPF object.
    Build,
    /// Run every check CI runs: fmt, clippy (host and eBPF), unit and
    /// property tests, BPF_PROG_TEST_RUN tests and end-to-end tests (root).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this string (end-to-end and
        /// kernel tests).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Fuzz the shared SMTP parser with cargo-fuzz (nightly, libFuzzer):
    /// the `parser` and `fast_path` targets.
    Fuzz {
        /// How long to fuzz in all, in seconds (split evenly between the
        /// targets).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Build a namespace gateway, attach the inspector, run real SMTP
    /// sessions through it and show what it saw. Cleans up after itself.
    Demo,
    /// Benchmark: in-kernel cost per packet (BPF_PROG_TEST_RUN) and end to
    /// end through a namespace gateway against baselines; writes
    /// target/bench/report.json.
    Bench {
        /// A smoke run of well under a minute (small counts, one round).
        #[arg(long)]
        quick: bool,
        /// Only the in-kernel part (BPF_PROG_TEST_RUN), printed, no
        /// report files: for before/after comparisons of the eBPF code.
        #[arg(long)]
        kernel_only: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build()
        }
        Task::Test { no_lint, filter } => {
            setup::run()?;
            test(no_lint, filter.as_deref())
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(seconds)
        }
        Task::Demo => {
            setup::run()?;
            build()?;
            demo::run()
        }
        Task::Bench { quick, kernel_only } => {
            setup::run()?;
            if kernel_only {
                return bench::run_kernel(quick);
            }
            build()?;
            bench::run(quick)
        }
    }
}

fn build() -> Result<()> {
    util::run(util::cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "inspector-userspace",
    ]))
}

fn test(no_lint: bool, filter: Option<&str>) -> Result<()> {
    let root = util::root();
    let ebpf = root.join("inspector-ebpf");
    if !no_lint {
        util::step("fmt: host workspace, eBPF crate, fuzz crate");
        util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
        util::run(util::nightly_cargo(&ebpf).args(["fmt", "--check"]))?;
        util::run(util::nightly_cargo(&root.join("fuzz")).args(["fmt", "--check"]))?;
        util::step(
            "clippy: host workspace (all targets), eBPF crate (with and without its bench \
             feature), fuzz crate",
        );
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
        // With and without the benchmark programs (`bench.rs` is only
        // compiled with the feature).
        for features in [&[][..], &["--features", "bench"][..]] {
            util::run(
                util::nightly_cargo(&ebpf)
                    .args(["clippy", "--release", "--locked"])
                    .args(features)
                    .args(["--", "-D", "warnings"]),
            )?;
        }
        util::run(
            util::nightly_cargo(&root.join("fuzz"))
                .args(["clippy", "--locked", "--", "-D", "warnings"]),
        )?;
    }
    util::step(
        "unit and property tests (inspector-common, inspector-userspace, inspector-testkit, xtask)",
    );
    util::run(util::cargo().args([
        "test",
        "--locked",
        "-p",
        "inspector-common",
        "-p",
        "inspector-userspace",
        "-p",
        "inspector-testkit",
        "-p",
        "xtask",
    ]))?;
    util::step("fuzzing the shared parser (bounded time)");
    fuzz::run(60)?;
    build()?;
    let bench_object = ebpf::bench_object()?;
    util::step("kernel and end-to-end tests (as root, one at a time)");
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--release",
        "--locked",
        "-p",
        "inspector-tests",
        "--",
    ]);
    cmd.args(["--test-threads=1"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    cmd.env("INSPECTOR_BIN", root.join("target/release/inspector"));
    cmd.env("INSPECTOR_BENCH_OBJ", &bench_object);
    cmd.env("RUST_BACKTRACE", "1");
    util::run(&mut cmd)?;
    if filter.is_none() {
        // The benchmark checks every run it makes (verdicts, frames,
        // counters, the inspector in the path): a quick one is a test of
        // the benchmark and of what it measures. Its report goes to a
        // scratch folder, not over the last real one.
        util::step("benchmark smoke run (cargo xtask bench --quick)");
        let out = tempfile::tempdir().context("creating a scratch folder")?;
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        util::run(
            std::process::Command::new(exe)
                .args(["bench", "--quick"])
                .env("INSPECTOR_BENCH_DIR", out.path()),
        )?;
    }
    Ok(())
}
