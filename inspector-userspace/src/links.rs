//! Attaching with pinned links, so that the kernel side outlives the
//! daemon: while `inspector attach` runs, every link is pinned under
//! `<pin-dir>/links/<ifname>.<hook>`. If the daemon dies, the programs stay
//! attached and keep inspecting with the pinned maps. The next `attach` on
//! the same pin dir loads the new program and swaps it into the existing
//! links atomically (`bpf_link_update`): no packet goes uninspected, and
//! flows keep the state they have in the pinned flow table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
};

/// Folder of the pinned links inside the pin dir.
pub const LINKS_DIR: &str = "links";

/// Where a link is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc-ingress",
            Hook::TcEgress => "tc-egress",
        }
    }

    pub fn from_name(s: &str) -> Option<Hook> {
        match s {
            "xdp" => Some(Hook::Xdp),
            "tc-ingress" => Some(Hook::TcIngress),
            "tc-egress" => Some(Hook::TcEgress),
            _ => None,
        }
    }
}

/// A pinned link found in a pin dir.
#[derive(Clone, Debug)]
pub struct PinnedEntry {
    pub iface: String,
    pub hook: Hook,
    pub path: PathBuf,
}

/// `<hook>:<iface>`. bpffs refuses names with a dot, which interface names
/// may have (`eth0.100`): `%` and `.` are percent-encoded. `:` cannot occur
/// in an interface name, so it separates.
pub fn link_path(pin_dir: &Path, iface: &str, hook: Hook) -> PathBuf {
    let enc = iface.replace('%', "%25").replace('.', "%2E");
    pin_dir
        .join(LINKS_DIR)
        .join(format!("{}:{enc}", hook.name()))
}

fn decode_name(name: &str) -> Option<(Hook, String)> {
    let (hook, enc) = name.split_once(':')?;
    let iface = enc.replace("%2E", ".").replace("%25", "%");
    Some((Hook::from_name(hook)?, iface))
}

/// Every pinned link of the pin dir.
pub fn pinned(pin_dir: &Path) -> Result<Vec<PinnedEntry>> {
    let dir = pin_dir.join(LINKS_DIR);
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((hook, iface)) = decode_name(&name) else {
            continue;
        };
        out.push(PinnedEntry {
            iface,
            hook,
            path: e.path(),
        });
    }
    out.sort_by(|a, b| (&a.iface, a.hook.name()).cmp(&(&b.iface, b.hook.name())));
    Ok(out)
}

/// The program id a pinned link runs.
pub fn program_id(path: &Path) -> Result<u32> {
    let fd: FdLink = open(path)?.into();
    Ok(fd.info().context("reading link info")?.program_id())
}

/// Result of attaching one hook.
pub enum Outcome {
    /// A new link was made and pinned.
    New(PinnedLink),
    /// A pinned link of an earlier instance now runs the new program.
    TakenOver(PinnedLink),
}

impl Outcome {
    pub fn into_link(self) -> PinnedLink {
        match self {
            Outcome::New(l) | Outcome::TakenOver(l) => l,
        }
    }
}

fn open(path: &Path) -> Result<PinnedLink> {
    PinnedLink::from_pin(path).with_context(|| format!("opening pinned link {}", path.display()))
}

/// Pins a link this run made.
fn pin_new(fd: FdLink, path: &Path) -> Result<Outcome> {
    let pinned = fd
        .pin(path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    Ok(Outcome::New(pinned))
}

/// After `attach_to_link` swapped the program in: the program hands the
/// link back (dropped here: closing that fd leaves the pin, which is what
/// keeps the link alive) and the pin is opened again to be held.
fn taken_over<L>(link: L, path: &Path) -> Result<Outcome> {
    drop(link);
    Ok(Outcome::TakenOver(open(path)?))
}

fn ensure_links_dir(pin_dir: &Path) -> Result<()> {
    let d = pin_dir.join(LINKS_DIR);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))
}

/// Attaches `prog` to `iface` with XDP, or takes over the pinned link.
pub fn attach_xdp(
    prog: &mut Xdp,
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
    map_err: impl Fn(ProgramError) -> anyhow::Error,
) -> Result<Outcome> {
    ensure_links_dir(pin_dir)?;
    let path = link_path(pin_dir, iface, Hook::Xdp);
    if path.exists() {
        let fd: FdLink = open(&path)?.into();
        let link = XdpLink::try_from(fd).context("the pinned link is not an XDP link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the program of the pinned link on `{iface}`"))?;
        return taken_over(prog.take_link(id)?, &path);
    }
    let id = prog.attach(iface, mode).map_err(map_err)?;
    let fd = FdLink::try_from(prog.take_link(id)?).context(
        "the kernel attached XDP through netlink, not a bpf_link (kernel older than 5.9?)",
    )?;
    pin_new(fd, &path)
}

/// Attaches `prog` to `iface` on TC ingress or egress, or takes over.
pub fn attach_tc(
    prog: &mut SchedClassifier,
    pin_dir: &Path,
    iface: &str,
    hook: Hook,
) -> Result<Outcome> {
    ensure_links_dir(pin_dir)?;
    let path = link_path(pin_dir, iface, hook);
    let t = match hook {
        Hook::TcIngress => TcAttachType::Ingress,
        Hook::TcEgress => TcAttachType::Egress,
        Hook::Xdp => bail!("not a TC hook"),
    };
    if path.exists() {
        let fd: FdLink = open(&path)?.into();
        let link = aya::programs::tc::SchedClassifierLink::try_from(fd)
            .context("the pinned link is not a TCX link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the program of the pinned link on `{iface}`"))?;
        return taken_over(prog.take_link(id)?, &path);
    }
    let id = prog.attach(iface, t).map_err(|e| {
        anyhow::Error::new(e).context(format!("attaching the TC program to `{iface}` ({t:?})"))
    })?;
    let fd = FdLink::try_from(prog.take_link(id)?).context(
        "the kernel attached TC through netlink, not a TCX link (kernel older than 6.6?)",
    )?;
    pin_new(fd, &path)
}

/// Detaches a pinned link: unpins it and closes the last reference.
pub fn remove(path: &Path) -> Result<()> {
    let fd = open(path)?
        .unpin()
        .with_context(|| format!("unpinning {}", path.display()))?;
    drop(fd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip_and_avoid_dots() {
        for iface in ["eth0", "eth0.100", "a%2Eb", "v.%.x"] {
            for hook in [Hook::Xdp, Hook::TcIngress, Hook::TcEgress] {
                let p = link_path(Path::new("/x"), iface, hook);
                let name = p.file_name().unwrap().to_str().unwrap();
                assert!(!name.contains('.'), "{name}");
                assert_eq!(decode_name(name), Some((hook, iface.to_string())));
            }
        }
    }
}
