//! Attaching with pinned links, so that the kernel side outlives the
//! daemon: while `inspector attach` runs, every link is pinned under
//! `<pin-dir>/links/<ifname>.<hook>`. If the daemon dies, the programs stay
//! attached and keep inspecting with the pinned maps. The next `attach` on
//! the same pin dir loads the new program and swaps it into the existing
//! links atomically (`bpf_link_update`): no packet goes uninspected, and
//! flows keep the state they have in the pinned flow table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use rustix::io::Errno;

use crate::loader;

/// Folder of the pinned links inside the pin dir.
pub const LINKS_DIR: &str = "links";

/// How `attach` hooks the programs in (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Native XDP where the driver supports it, generic otherwise.
    Xdp,
    /// Generic (SKB) XDP: works on every interface, slower.
    XdpSkb,
    /// TC clsact ingress and egress (TCX links on 6.6+).
    Tc,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::XdpSkb => "xdp-skb",
            Mode::Tc => "tc",
        }
    }

    /// The hooks a mode attaches to on every interface; a pinned link on
    /// another hook belongs to another mode.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            Mode::Xdp | Mode::XdpSkb => &[Hook::Xdp],
            Mode::Tc => &[Hook::TcIngress, Hook::TcEgress],
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::XdpSkb => XdpMode::Skb,
            _ => XdpMode::default(),
        }
    }
}

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

    /// The program of the object that runs on this hook.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Xdp => loader::XDP_PROGRAM,
            Hook::TcIngress => loader::TC_PROGRAM,
            Hook::TcEgress => loader::TC_EGRESS_PROGRAM,
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

/// The pinned links of one `attach`, to undo on exit.
pub struct LinkSet {
    links: Vec<(PathBuf, PinnedLink)>,
    /// Links made by this run (the others were taken over).
    made: Vec<PathBuf>,
    taken_over: usize,
    dropped: Vec<String>,
}

/// Fails if the kernel runs an inspector program on one of `ifaces` that
/// is not one of the links pinned in `pin_dir` (which this run takes
/// over): another `attach`, with another pin dir or mode, inspects that
/// interface, and two would inspect (and mask) every packet twice.
fn refuse_other_inspectors(pin_dir: &Path, ifaces: &[String]) -> Result<()> {
    let ours = pinned(pin_dir)?;
    for iface in ifaces {
        let index = crate::hooks::ifindex(iface)?;
        for found in crate::hooks::inspectors_on(iface, index)? {
            let pinned_here = ours.iter().any(|e| {
                &e.iface == iface
                    && e.hook == found.hook
                    && program_id(&e.path).ok() == Some(found.program_id)
            });
            if !pinned_here {
                let what = match found.hook {
                    Hook::Xdp => "an XDP program".to_string(),
                    h => format!("a TCX program ({})", h.name()),
                };
                bail!(
                    "interface `{iface}` already has {what} of another inspector (program {}, \
                     not pinned in {}): two would inspect every packet twice; stop that one, or \
                     `inspector detach --pin-dir` its pin dir, first",
                    found.program_id,
                    pin_dir.display()
                );
            }
        }
    }
    Ok(())
}

impl LinkSet {
    /// Attaches the loaded program of `mode` to every interface, taking
    /// over the links an earlier instance left pinned in `pin_dir`. On
    /// failure nothing this run made stays attached.
    pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, ifaces: &[String], mode: Mode) -> Result<Self> {
        // Pinned links of another mode cannot be taken over.
        for e in pinned(pin_dir)? {
            if !mode.hooks().contains(&e.hook) {
                bail!(
                    "{} holds a {} link on `{}` from an earlier run in another mode; \
                     run `inspector detach --pin-dir {}` first",
                    pin_dir.display(),
                    e.hook.name(),
                    e.iface,
                    pin_dir.display()
                );
            }
        }
        refuse_other_inspectors(pin_dir, ifaces)?;
        let mut out = LinkSet {
            links: Vec::new(),
            made: Vec::new(),
            taken_over: 0,
            dropped: Vec::new(),
        };
        if let Err(e) = out.attach_all(ebpf, pin_dir, ifaces, mode) {
            // Leave nothing half-attached: undo the links this run made
            // (taken-over ones belong to the earlier instance and stay).
            for (path, link) in std::mem::take(&mut out.links) {
                if out.made.contains(&path) {
                    let _ = link.unpin();
                }
            }
            return Err(e);
        }
        // Interfaces an earlier instance was attached to and this run does
        // not name: the operator dropped them, so they are detached (only
        // now, once everything named runs the new program).
        for e in pinned(pin_dir)? {
            if !ifaces.contains(&e.iface) {
                remove(&e.path)?;
                out.dropped.push(format!("{} ({})", e.iface, e.hook.name()));
            }
        }
        Ok(out)
    }

    /// The hooks of an earlier instance this run detached because its
    /// interface was not named again, as `iface (hook)`.
    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    fn attach_all(
        &mut self,
        ebpf: &mut Ebpf,
        pin_dir: &Path,
        ifaces: &[String],
        mode: Mode,
    ) -> Result<()> {
        if mode == Mode::Tc {
            let tcx = KernelVersion::current()
                .map(|v| v >= KernelVersion::new(6, 6, 0))
                .unwrap_or(false);
            if !tcx {
                bail!("--mode tc needs TCX links (Linux 6.6 or newer); use --mode xdp");
            }
            for &hook in mode.hooks() {
                let name = hook.program();
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .with_context(|| format!("the TC program {name} is missing"))?
                    .try_into()?;
                for iface in ifaces {
                    let o = attach_tc(prog, pin_dir, iface, hook)?;
                    self.keep(link_path(pin_dir, iface, hook), o);
                }
            }
        } else {
            let prog: &mut Xdp = ebpf
                .program_mut(loader::XDP_PROGRAM)
                .context("the XDP program is missing")?
                .try_into()?;
            for iface in ifaces {
                let o = attach_xdp(prog, pin_dir, iface, mode.xdp_mode(), |e| {
                    xdp_attach_error(iface, mode, e)
                })?;
                self.keep(link_path(pin_dir, iface, Hook::Xdp), o);
            }
        }
        Ok(())
    }

    fn keep(&mut self, path: PathBuf, o: Outcome) {
        if matches!(o, Outcome::TakenOver(_)) {
            self.taken_over += 1;
        } else {
            self.made.push(path.clone());
        }
        self.links.push((path, o.into_link()));
    }

    /// How many links of an earlier instance now run this run's program.
    pub fn taken_over(&self) -> usize {
        self.taken_over
    }

    /// Detaches every link (unpins it, closes it).
    pub fn remove(mut self) -> Result<()> {
        for (path, link) in self.links.drain(..) {
            let fd = link
                .unpin()
                .with_context(|| format!("unpinning {}", path.display()))?;
            drop(fd);
        }
        Ok(())
    }
}

/// What to do when XDP cannot be attached to `iface`, for the operator.
fn xdp_attach_error(iface: &str, mode: Mode, e: ProgramError) -> anyhow::Error {
    let errno = match &e {
        ProgramError::SyscallError(s) => Errno::from_io_error(&s.io_error),
        _ => None,
    };
    match errno {
        Some(Errno::BUSY | Errno::EXIST) => anyhow::anyhow!(
            "interface `{iface}` already has an XDP program attached: if it is another \
             `inspector attach`, stop that one; otherwise remove it (`ip link set dev {iface} xdp off`)"
        ),
        Some(Errno::OPNOTSUPP) => anyhow::anyhow!(
            "interface `{iface}` does not support XDP mode {}; try --mode xdp-skb",
            mode.name()
        ),
        _ => anyhow::Error::new(e).context(format!("attaching to interface `{iface}`")),
    }
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
