//! `inspector detach`: removes what `attach --persist` (or a crash) left
//! attached and pinned. Idempotent: with nothing (or not that interface)
//! attached it says so and succeeds, so scripts can run it again safely.

use anyhow::Result;
use inspector_userspace::{links, loader::MAP_NAMES, pin::PinDir, privilege};

use crate::{cli::DetachArgs, out};

pub fn run(args: DetachArgs) -> Result<()> {
    let DetachArgs { ifaces, pin_dir } = args;
    privilege::require_admin("detach")?;
    if !pin_dir.exists() {
        out::line(format_args!(
            "nothing to detach: {} does not exist (if the inspector runs with another \
             --pin-dir, name it)",
            pin_dir.display()
        ))?;
        return Ok(());
    }
    let pins = PinDir::lock_existing(&pin_dir)?;
    let all = links::pinned(pins.path())?;
    for i in &ifaces {
        if !all.iter().any(|e| &e.iface == i) {
            out::line(format_args!(
                "nothing to detach on `{i}`: the inspector at {} is not attached to it",
                pin_dir.display()
            ))?;
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|e| ifaces.is_empty() || ifaces.contains(&e.iface))
        .collect();
    for e in &chosen {
        links::remove(&e.path)?;
        out::line(format_args!(
            "detached from {} ({})",
            e.iface,
            e.hook.name()
        ))?;
    }
    if chosen.len() == all.len() {
        if all.is_empty() && ifaces.is_empty() {
            out::line(format_args!(
                "nothing was attached at {}; removing its pins",
                pin_dir.display()
            ))?;
        }
        pins.remove(MAP_NAMES)?;
        if pin_dir.exists() {
            // A folder (or mount) the operator made stays.
            out::line(format_args!(
                "removed the pins from {} (nothing records that the inspector made the folder: left in place)",
                pin_dir.display()
            ))?;
        } else {
            out::line(format_args!("removed {}", pin_dir.display()))?;
        }
    }
    Ok(())
}
