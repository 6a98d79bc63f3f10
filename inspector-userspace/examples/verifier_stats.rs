//! Loads the embedded programs with verifier statistics and prints them:
//! how close each program is to the verifier's limits.
//! Run as root: `cargo run --release --example verifier_stats`.

use anyhow::{Context, Result};
use aya::{
    programs::{SchedClassifier, Xdp},
    EbpfLoader, VerifierLogLevel,
};

fn main() -> Result<()> {
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::STATS)
        .load(inspector_userspace::loader::EBPF_OBJECT)?;
    for name in ["inspector_xdp", "inspector_tc", "inspector_tc_eg"] {
        let started = std::time::Instant::now();
        let prog = ebpf.program_mut(name).context("no program")?;
        let r = match name {
            "inspector_xdp" => {
                let p: &mut Xdp = prog.try_into()?;
                p.load().map(|_| p.info())
            }
            _ => {
                let p: &mut SchedClassifier = prog.try_into()?;
                p.load().map(|_| p.info())
            }
        };
        match r {
            Ok(info) => println!(
                "{name}: loaded in {:?}; verified instructions: {:?}",
                started.elapsed(),
                info?.verified_instruction_count()
            ),
            Err(e) => println!("{}", inspector_userspace::loader::verifier_error(name, e)),
        }
    }
    Ok(())
}
