//! `inspector attach`: load, attach (or take over an earlier instance's
//! links), then run until SIGINT/SIGTERM: expire flows, serve metrics.

use std::{borrow::Cow, collections::HashSet, path::Path};

use anyhow::{bail, Context, Result};
use aya::util::KernelVersion;
use inspector_common::verbs::VerbKey;
use inspector_userspace::{
    fallback, flows, journal,
    links::{self, LinkSet, Mode},
    loader::{self, MAP_NAMES},
    metrics, notify,
    pin::PinDir,
    privilege,
    settings::{Refused, Settings},
};
use log::{info, warn};

use crate::cli::AttachArgs;

/// Oldest kernel the programs load on: bpf_xdp_load_bytes/store_bytes
/// arrived in 5.18 (and bpf_loop in 5.17).
const MIN_KERNEL: (u8, u8) = (5, 18);

/// How often closed and idle flow entries are looked for.
const EXPIRY_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

pub fn run(args: AttachArgs) -> Result<()> {
    // Everything the command line and the policy file say is checked
    // before anything else happens.
    let settings = Settings::resolve(&args.given(), args.policy.as_deref())?;
    let mut seen = HashSet::new();
    if let Some(i) = args.ifaces.iter().find(|i| !seen.insert(*i)) {
        return Err(Refused(format!("interface `{i}` is named twice")).into());
    }
    for o in &settings.overrides {
        info!("{o}");
    }
    privilege::require_admin("attach")?;
    check_kernel()?;
    for i in &args.ifaces {
        check_iface(i)?;
    }
    let object: Cow<[u8]> = match &args.object {
        Some(p) => Cow::Owned(
            std::fs::read(p).with_context(|| format!("reading eBPF object {}", p.display()))?,
        ),
        None => Cow::Borrowed(loader::EBPF_OBJECT),
    };

    let pins = PinDir::prepare(&args.pin_dir)?;
    // Links pinned by an earlier instance (crashed, or run with --persist):
    // that instance's programs are still inspecting.
    let earlier = !links::pinned(pins.path())?.is_empty();
    let result = run_attached(&args, &settings, &pins, &object);
    let keep = match &result {
        Ok(()) => args.persist,
        // A failed takeover leaves the earlier instance as it was.
        Err(_) => earlier,
    };
    if keep {
        return result;
    }
    let cleanup = pins.remove(MAP_NAMES);
    result.and(cleanup)
}

fn check_kernel() -> Result<()> {
    let Ok(v) = KernelVersion::current() else {
        warn!("could not read the kernel version; trying anyway");
        return Ok(());
    };
    let (maj, min) = MIN_KERNEL;
    if v < KernelVersion::new(maj, min, 0) {
        bail!(
            "kernel {v:?} is too old: the inspector needs Linux {maj}.{min} or newer \
             (bpf_xdp_load_bytes and bpf_xdp_store_bytes arrived in 5.18)"
        );
    }
    Ok(())
}

/// Fails unless `name` is an interface of this network namespace.
fn check_iface(name: &str) -> Result<()> {
    // SIOCGIFINDEX needs a socket of the caller's network namespace, any kind.
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .context("opening a socket to look up interfaces")?;
    match rustix::net::netdevice::name_to_index(&sock, name) {
        Ok(_) => Ok(()),
        Err(_) => bail!(
            "unknown interface `{name}` (see `ip link` for the interfaces of this network namespace)"
        ),
    }
}

/// Loads, attaches, runs until a signal, then detaches (or, with
/// --persist, leaves the links pinned).
fn run_attached(
    args: &AttachArgs,
    settings: &Settings,
    pins: &PinDir,
    object: &[u8],
) -> Result<()> {
    // Everything that can fail comes before anything changes what the
    // kernel does: a failed takeover must leave the running instance as it
    // was (its program, its ports, its policy).
    let mut ebpf = loader::open_with(object, Some(pins.path()), settings.max_flows)?;
    match args.mode {
        Mode::Tc => loader::load_tc(&mut ebpf)?,
        Mode::Xdp | Mode::XdpSkb => drop(loader::load_xdp(&mut ebpf)?),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Bound before the readiness line below, so that whoever waits for it
    // can scrape at once.
    let metrics = match args.metrics {
        Some(addr) => Some(rt.block_on(metrics::bind(addr))?),
        None => None,
    };
    // The handlers go in before anything is attached: a SIGTERM right
    // after the readiness line must stop cleanly, not kill.
    let (signals, relay) = {
        let _rt = rt.enter();
        (Signals::install()?, journal::Relay::bind(pins.path())?)
    };
    let links = attach_with_settings(&mut ebpf, args, settings, pins.path())?;
    // This process's own events (the fallback's drops), for the relay.
    let (own_events, own_events_rx) = tokio::sync::mpsc::channel(1024);
    let fallback = match settings.fallback {
        Some(limits) => match start_fallback(&mut ebpf, args.mode) {
            // Announced before the readiness line below: whoever waits
            // for it may send reordered segments at once.
            Some(tap) => {
                let _rt = rt.enter();
                match fallback::Daemon::start(pins.path(), tap, limits, own_events) {
                    Ok(daemon) => Some(daemon),
                    Err(e) => {
                        warn!("no reassembly fallback ({e:#}): out-of-order segments are dropped and retransmitted");
                        None
                    }
                }
            }
            None => None,
        },
        None => {
            info!("reassembly fallback off: out-of-order segments are dropped and retransmitted");
            None
        }
    };
    if let Some(addr) = args.metrics {
        info!("serving metrics on http://{addr}/metrics");
    }
    let ifaces = args.ifaces.join(", ");
    let ports: Vec<String> = settings.ports.iter().map(|p| p.to_string()).collect();
    // Tests and scripts wait for this line: everything is in place once it
    // is printed.
    info!(
        "attached to {ifaces} (mode {}), inspecting ports {}, maps pinned in {}",
        args.mode.name(),
        ports.join(","),
        pins.path().display()
    );
    // systemd (Type=notify): ready only now, with everything in place.
    notify::notify(&format!(
        "READY=1\nSTATUS=inspecting ports {} on {ifaces} (mode {})",
        ports.join(","),
        args.mode.name()
    ))?;
    let ran = rt.block_on(run_until_signal(
        signals,
        own_events_rx,
        metrics,
        relay,
        fallback,
        pins.path(),
    ));
    // The kernel drops out-of-order segments again at once, rather than
    // redirecting them to a tap that is going away.
    if let Err(e) = fallback::withdraw(pins.path()) {
        warn!("clearing the fallback entry: {e:#}");
    }
    ran?;
    notify::notify("STOPPING=1")?;
    if args.persist {
        // Dropping the pinned links leaves them attached: the kernel goes on
        // inspecting until the next `attach` takes over or `detach` runs.
        drop(links);
        info!("left the inspector attached to {ifaces} (--persist); `inspector detach` removes it");
    } else {
        links.remove()?;
        info!("detached from {ifaces}");
    }
    Ok(())
}

/// Creates the reassembly fallback's tap and attaches the program to its
/// ingress (where the segments it writes back are inspected), in the mode
/// of the other interfaces; the link belongs to the loaded program and goes
/// with it. `None` (logged) if that fails: out-of-order segments are then
/// dropped, as without a fallback.
fn start_fallback(ebpf: &mut aya::Ebpf, mode: Mode) -> Option<fallback::Tap> {
    let attach = |ebpf: &mut aya::Ebpf, tap: &fallback::Tap| -> Result<()> {
        match mode {
            Mode::Tc => {
                let prog: &mut aya::programs::SchedClassifier = ebpf
                    .program_mut(loader::TC_PROGRAM)
                    .context("the TC program is missing")?
                    .try_into()?;
                prog.attach(&tap.name, aya::programs::TcAttachType::Ingress)?;
            }
            Mode::Xdp | Mode::XdpSkb => {
                let prog: &mut aya::programs::Xdp = ebpf
                    .program_mut(loader::XDP_PROGRAM)
                    .context("the XDP program is missing")?
                    .try_into()?;
                let flags = match mode {
                    Mode::XdpSkb => aya::programs::XdpMode::Skb,
                    _ => aya::programs::XdpMode::default(),
                };
                prog.attach(&tap.name, flags)?;
            }
        }
        Ok(())
    };
    let tap = fallback::Tap::create().and_then(|tap| {
        attach(ebpf, &tap)
            .with_context(|| format!("attaching to the fallback tap {}", tap.name))?;
        Ok(tap)
    });
    match tap {
        Ok(tap) => Some(tap),
        Err(e) => {
            warn!("no reassembly fallback ({e:#}): out-of-order segments are dropped and retransmitted");
            None
        }
    }
}

/// Writes the settings into the maps and attaches the loaded program (or
/// swaps it into the links an earlier instance left), in the order that
/// never lets a program run without settings.
fn attach_with_settings(
    ebpf: &mut aya::Ebpf,
    args: &AttachArgs,
    settings: &Settings,
    pin_dir: &Path,
) -> Result<LinkSet> {
    let write_settings = |ebpf: &mut aya::Ebpf| -> Result<()> {
        loader::set_ports(ebpf, &settings.ports)?;
        loader::set_policy(ebpf, &settings.allowed)?;
        loader::set_config(ebpf, settings.config)
    };
    let takeover = !links::pinned(pin_dir)?.is_empty();
    // What the running instance enforces now, live changes included.
    let live = if takeover {
        Some(loader::policy_of(ebpf)?)
    } else {
        None
    };
    if !takeover {
        // A fresh program must never run with empty maps (no ports, a
        // policy that masks everything): settings first.
        write_settings(ebpf)?;
    }
    let links = LinkSet::attach(ebpf, pin_dir, &args.ifaces, args.mode)?;
    if takeover {
        // The earlier program ran with the earlier settings until the swap;
        // the new one starts with them too, then gets the new ones.
        write_settings(ebpf)?;
    }
    for d in links.dropped() {
        info!("detached from {d}: an earlier instance was attached there, this one is not");
    }
    if links.taken_over() > 0 {
        info!(
            "took over {} pinned link(s) of an earlier instance: flows keep their state",
            links.taken_over()
        );
    }
    log_policy(settings, live.as_deref());
    Ok(links)
}

/// Says which verb policy is in force and where it comes from; on a
/// takeover, also what the earlier instance enforced differently (changes
/// made live with `inspector policy` without `--permanent`, which the
/// configuration replaces).
fn log_policy(settings: &Settings, live: Option<&[VerbKey]>) {
    let names = |keys: &mut dyn Iterator<Item = &VerbKey>| -> Vec<String> {
        let mut v: Vec<String> = keys.map(|k| loader::verb_text(*k)).collect();
        v.sort();
        v
    };
    let allowed = names(&mut settings.allowed.iter());
    info!(
        "policy in force: {} allowed ({}), from {}; every other verb is masked",
        allowed.len(),
        allowed.join(" "),
        settings.policy_origin
    );
    let Some(live) = live else { return };
    let lost_allow = names(&mut live.iter().filter(|k| !settings.allowed.contains(k)));
    let lost_deny = names(&mut settings.allowed.iter().filter(|k| !live.contains(k)));
    if lost_allow.is_empty() && lost_deny.is_empty() {
        info!("the earlier instance enforced the same policy");
        return;
    }
    let mut what = Vec::new();
    if !lost_allow.is_empty() {
        what.push(format!(
            "allowed {} (masked again now)",
            lost_allow.join(" ")
        ));
    }
    if !lost_deny.is_empty() {
        what.push(format!(
            "masked {} (allowed again now)",
            lost_deny.join(" ")
        ));
    }
    warn!(
        "the earlier instance's live policy differed from the configuration: it {}; those were \
         runtime changes (`inspector policy` without --permanent), replaced by the configuration \
         at this start",
        what.join(" and ")
    );
}

/// The daemon's life: expire flows and serve metrics until SIGINT or
/// SIGTERM (or until one of them fails).
async fn run_until_signal(
    signals: Signals,
    own_events: tokio::sync::mpsc::Receiver<inspector_common::events::Event>,
    metrics: Option<tokio::net::TcpListener>,
    relay: journal::Relay,
    fallback: Option<fallback::Daemon>,
    pin_dir: &Path,
) -> Result<()> {
    let reassemble = async {
        match fallback {
            Some(daemon) => daemon.run().await,
            None => std::future::pending().await,
        }
    };
    let serve_metrics = async {
        match metrics {
            Some(l) => metrics::serve(l, pin_dir.to_path_buf()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = signals.wait() => r,
        r = journal::run(pin_dir, relay, own_events) => r,
        r = expire_flows(pin_dir) => r,
        r = serve_metrics => r,
        r = reassemble => r,
    }
}

/// Removes closed and idle flow entries every few seconds. Works on the
/// pinned maps, like any other process would.
async fn expire_flows(pin_dir: &Path) -> Result<()> {
    let (mut flow_map, mut clients, mut counters) = flows::open_pinned(pin_dir)?;
    let mut tick = tokio::time::interval(EXPIRY_PERIOD);
    loop {
        tick.tick().await;
        match flows::expire(&mut flow_map, &mut counters) {
            Ok(n) if n > 0 => log::debug!("expired {n} flow entries"),
            Ok(_) => {}
            Err(e) => warn!("expiring flow entries: {e:#}"),
        }
        if let Err(e) = flows::recount(&flow_map, &mut clients) {
            warn!("recounting the flows of each client: {e:#}");
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs a tokio runtime context.
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> Result<()> {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
        Ok(())
    }
}
