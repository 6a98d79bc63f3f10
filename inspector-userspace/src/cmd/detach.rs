//! `inspector detach`: removes what `attach --persist` (or a crash) left
//! attached and pinned.

use anyhow::{bail, Result};
use inspector_userspace::{links, loader::MAP_NAMES, pin::PinDir, privilege};

use crate::cli::DetachArgs;

pub fn run(args: DetachArgs) -> Result<()> {
    let DetachArgs { ifaces, pin_dir } = args;
    privilege::require_admin("detach")?;
    if !pin_dir.exists() {
        bail!(
            "nothing to detach: {} does not exist (is the inspector attached with another --pin-dir?)",
            pin_dir.display()
        );
    }
    let pins = PinDir::lock_existing(&pin_dir)?;
    let all = links::pinned(pins.path())?;
    for i in &ifaces {
        if !all.iter().any(|e| &e.iface == i) {
            bail!(
                "the inspector at {} is not attached to `{i}`",
                pin_dir.display()
            );
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|e| ifaces.is_empty() || ifaces.contains(&e.iface))
        .collect();
    for e in &chosen {
        links::remove(&e.path)?;
        println!("detached from {} ({})", e.iface, e.hook.name());
    }
    if chosen.len() == all.len() {
        pins.remove(MAP_NAMES)?;
        println!("removed {}", pin_dir.display());
    }
    Ok(())
}
