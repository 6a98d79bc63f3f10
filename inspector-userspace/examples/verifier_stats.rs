//! Loads the embedded programs with verifier statistics and prints them:
//! how close each program is to the verifier's limits.
//! Run as root: `cargo run --release --example verifier_stats`.

use anyhow::{Context, Result};
use aya::{programs::Xdp, EbpfLoader, VerifierLogLevel};

fn main() -> Result<()> {
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::STATS)
        .load(inspector_userspace::loader::EBPF_OBJECT)?;
    let prog: &mut Xdp = ebpf
        .program_mut(inspector_userspace::loader::XDP_PROGRAM)
        .context("no program")?
        .try_into()?;
    let started = std::time::Instant::now();
    match prog.load() {
        Ok(()) => {
            let info = prog.info()?;
            println!(
                "loaded in {:?}; verified instructions: {:?}",
                started.elapsed(),
                info.verified_instruction_count()
            );
        }
        Err(e) => {
            println!(
                "{}",
                inspector_userspace::loader::verifier_error("inspector_xdp", e)
            );
        }
    }
    Ok(())
}
