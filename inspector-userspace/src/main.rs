//! `inspector`: ESMTP command firewall in the kernel (XDP), this is its
//! command-line front end.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use aya::programs::{ProgramError, XdpMode};
use clap::{Parser, Subcommand, ValueEnum};
use inspector_common::{
    config::{Config, CFG_FRAGMENTS_PASS, CFG_MIDSTREAM_DROP, CFG_MONITOR},
    ports::{DEFAULT_PORTS, NEVER_INSPECTED},
    verbs::{VerbKey, DEFAULT_ALLOWED},
};
use inspector_userspace::{
    flows,
    links::{self, Hook},
    loader::{self, MAP_NAMES},
    pin::{PinDir, DEFAULT_PIN_DIR},
    privilege, stats,
};

use inspector_userspace::settings::{Action, PolicyFile};

mod events_cmd;
mod policy;
use log::{info, warn};

/// Oldest kernel the programs load on: bpf_xdp_load_bytes/store_bytes
/// arrived in 5.18 (and bpf_loop in 5.17).
const MIN_KERNEL: (u32, u32) = (5, 18);

#[derive(Parser)]
#[command(
    name = "inspector",
    version,
    about = "ESMTP command firewall in the Linux kernel (eBPF/XDP)",
    long_about = "ESMTP command firewall in the Linux kernel (eBPF/XDP).\n\n\
        Attach it to the interfaces of a mail gateway: it parses SMTP on the inspected \
        ports (default 25 and 587) and masks disallowed command verbs in place with `X`, \
        so the server answers 500 and the session goes on. Allowed by default, as on the \
        PIX/ASA: DATA HELO MAIL NOOP QUIT RCPT RSET AUTH EHLO ETRN HELP SAML SEND SOML VRFY.\n\n\
        Exit status: 0 success, 1 error (one line on stderr says what and what to do), \
        2 bad command line.",
    after_help = "Examples:\n  \
        inspector attach --iface eth0 --iface eth1\n  \
        inspector stats\n  \
        inspector stats --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the inspector, attach it to interfaces and run until SIGINT/SIGTERM.
    ///
    /// Attaches the XDP (or TC) program to every --iface, pins its maps and
    /// links under --pin-dir (mounting a bpffs there if none is mounted),
    /// expires closed flows, and stays in the foreground. On SIGINT or
    /// SIGTERM it detaches from every interface and removes its pins, unless
    /// --persist. If the pin dir holds the links of an earlier instance (it
    /// crashed, or ran with --persist), they are taken over: the new program
    /// replaces the old one atomically and open flows keep their state.
    #[command(after_help = "Examples:\n  \
        inspector attach --iface eth0 --iface eth1\n  \
        inspector attach --iface eth0 --iface eth1 --policy /etc/inspector/policy.toml --persist\n  \
        inspector attach --iface eth0 --port 25 --port 2525 --mode xdp-skb\n  \
        inspector attach --iface eth0 --mode tc --monitor --metrics 127.0.0.1:9725")]
    Attach {
        /// Interface to attach to (repeat for each; a gateway needs both sides).
        #[arg(long = "iface", short = 'i', required = true, value_name = "IF")]
        ifaces: Vec<String>,
        /// Hook: `xdp` lets the kernel choose native or generic XDP,
        /// `xdp-skb` forces generic XDP, `tc` attaches to clsact ingress and
        /// egress (for a host that runs the MTA itself, or where XDP does not
        /// fit).
        #[arg(long, value_enum, default_value_t = Mode::Xdp)]
        mode: Mode,
        /// Inspected server port (repeat for each). Default: 25 and 587.
        /// Port 465 (implicit TLS) cannot be inspected and is refused.
        #[arg(long = "port", short = 'p', value_name = "N")]
        ports: Vec<u16>,
        /// Folder on a bpf filesystem for the pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
        /// Load this eBPF object file instead of the embedded one (to try a
        /// custom build of the kernel programs).
        #[arg(long, value_name = "FILE")]
        object: Option<PathBuf>,
        /// Also allow VERB (repeat for each), on top of the fifteen verbs of
        /// the default policy. Example: --allow STARTTLS
        #[arg(long = "allow", value_name = "VERB")]
        allow: Vec<String>,
        /// Mask VERB although the default policy allows it (repeat for each).
        /// Example: --deny VRFY
        #[arg(long = "deny", value_name = "VERB")]
        deny: Vec<String>,
        /// What to do with payload of flows whose start the inspector did not
        /// see (opened before it was attached, or evicted): `pass` them
        /// untouched (counted as midstream; the default) or `drop` them.
        #[arg(long, value_enum)]
        midstream: Option<Midstream>,
        /// IP fragments of inspected flows cannot be inspected: `drop` them
        /// (the default) or `pass` them uninspected.
        #[arg(long, value_enum)]
        fragments: Option<Fragments>,
        /// Count and report what would be masked or dropped, but change and
        /// drop nothing.
        #[arg(long)]
        monitor: bool,
        /// Read settings from a TOML policy file (ports, allow/deny/allowed,
        /// midstream, fragments, monitor, max_flows); options given on the
        /// command line apply on top. See README "Policy file".
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Serve the counters in Prometheus text format on ADDR, e.g.
        /// 127.0.0.1:9725 (GET /metrics).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Flow table size (entries; least recently used flows are evicted
        /// when it is full). Default 65536, about 35 MB.
        #[arg(long, value_name = "N")]
        max_flows: Option<u32>,
        /// On SIGINT/SIGTERM, leave the programs attached and the maps
        /// pinned: the kernel keeps inspecting, and the next `attach` on the
        /// same pin dir takes over without losing flow state (upgrades,
        /// restarts). `inspector detach` removes everything.
        #[arg(long)]
        persist: bool,
    },
    /// Show what is attached where, the live policy, flows and uptime.
    #[command(after_help = "Examples:\n  inspector status\n  inspector status --json")]
    Status {
        /// One JSON object.
        #[arg(long)]
        json: bool,
        /// Pin dir of the inspector.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
    /// Remove what `attach` left attached or pinned (after `attach --persist`
    /// or a crash). With --iface, only that interface's hooks.
    #[command(after_help = "Examples:\n  inspector detach\n  inspector detach --iface eth1")]
    Detach {
        /// Only detach from this interface (repeat for each).
        #[arg(long = "iface", short = 'i', value_name = "IF")]
        ifaces: Vec<String>,
        /// Pin dir of the inspector to remove.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
    /// Show or change the verb policy of a running `inspector attach`, live.
    ///
    /// Changes apply to the next command of every flow, without reloading
    /// anything and without disturbing sessions in progress.
    #[command(after_help = "Examples:\n  \
        inspector policy show\n  \
        inspector policy allow STARTTLS\n  \
        inspector policy deny VRFY EXPN")]
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
        /// Pin dir of the running `attach`.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR", global = true)]
        pin_dir: PathBuf,
    },
    /// Stream masked-command and drop events of a running `inspector attach`.
    ///
    /// One line per event: time, action (mask, drop, would-mask in monitor
    /// mode), client and server address and port, the verb (printable
    /// characters, first 8) and, for drops, the reason. Runs until
    /// interrupted. Only one `events` reader should run at a time.
    #[command(after_help = "Example:\n  inspector events --json | jq 'select(.action==\"mask\")'")]
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Pin dir of the running `attach`.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
    /// Print the counters of a running `inspector attach`.
    ///
    /// Reads the per-CPU counter map pinned by `attach` and prints each
    /// counter summed over all CPUs. Safe to run at any time, from any
    /// process with CAP_BPF.
    #[command(
        after_help = "Examples:\n  inspector stats\n  inspector stats --json | jq .packets_inspected"
    )]
    Stats {
        /// Print one JSON object whose keys are the counter names.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh every SECS seconds with per-second rates, until Ctrl-C.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        /// Pin dir of the running `attach`.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print the allowed verbs (everything else is masked).
    Show {
        /// As a JSON object: {"allowed": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Allow verbs (case-insensitive).
    Allow {
        #[arg(required = true, value_name = "VERB")]
        verbs: Vec<String>,
    },
    /// Mask verbs (case-insensitive).
    Deny {
        #[arg(required = true, value_name = "VERB")]
        verbs: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Midstream {
    Pass,
    Drop,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fragments {
    Drop,
    Pass,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Native XDP where the driver supports it, generic otherwise.
    Xdp,
    /// Generic (SKB) XDP: works on every interface, slower.
    XdpSkb,
    /// TC clsact ingress and egress (TCX links on 6.6+).
    Tc,
}

impl Mode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::XdpSkb => XdpMode::Skb,
            _ => XdpMode::default(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::XdpSkb => "xdp-skb",
            Mode::Tc => "tc",
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach {
            ifaces,
            mode,
            ports,
            pin_dir,
            object,
            allow,
            deny,
            midstream,
            fragments,
            monitor,
            persist,
            policy: policy_file,
            max_flows,
            metrics,
        } => (|| {
            if max_flows == Some(0) {
                bail!("--max-flows must be at least 1");
            }
            let file = match &policy_file {
                Some(p) => PolicyFile::read(p)?,
                None => PolicyFile::default(),
            };
            let base = match &file.allowed {
                Some(list) => policy::with_changes(&[], list, &[])?,
                None => default_policy()?,
            };
            let base = policy::with_changes(&base, &file.allow, &file.deny)?;
            let midstream = midstream.or(file.midstream.map(|a| match a {
                Action::Pass => Midstream::Pass,
                Action::Drop => Midstream::Drop,
            }));
            let fragments = fragments.or(file.fragments.map(|a| match a {
                Action::Pass => Fragments::Pass,
                Action::Drop => Fragments::Drop,
            }));
            let ports = if ports.is_empty() {
                file.ports.clone().unwrap_or_default()
            } else {
                ports
            };
            let settings = Settings {
                allowed: policy::with_changes(&base, &allow, &deny)?,
                config: config_word(
                    midstream.unwrap_or(Midstream::Pass),
                    fragments.unwrap_or(Fragments::Drop),
                    monitor || file.monitor.unwrap_or(false),
                ),
                persist,
                max_flows: max_flows.or(file.max_flows),
                metrics,
            };
            attach(
                &ifaces,
                mode,
                &ports,
                &pin_dir,
                object.as_deref(),
                &settings,
            )
        })(),
        Command::Stats {
            json,
            pin_dir,
            watch,
        } => match watch {
            Some(secs) => watch_stats(secs, &pin_dir),
            None => print_stats(json, &pin_dir),
        },
        Command::Status { json, pin_dir } => (|| {
            privilege::require_bpf("status")?;
            let allowed = policy::allowed_names(&pin_dir)?;
            let st = inspector_userspace::status::Status::read(&pin_dir, allowed)?;
            if json {
                println!("{}", st.to_json());
            } else {
                print!("{}", st.to_text());
            }
            Ok(())
        })(),
        Command::Detach { ifaces, pin_dir } => detach(&ifaces, &pin_dir),
        Command::Policy { action, pin_dir } => policy::run(action, &pin_dir),
        Command::Events { json, pin_dir } => events_cmd::run(json, &pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first. A verifier
            // rejection carries its log on the following lines.
            eprintln!("inspector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_kernel() -> Result<()> {
    let Ok(v) = aya::util::KernelVersion::current() else {
        warn!("could not read the kernel version; trying anyway");
        return Ok(());
    };
    let (maj, min) = MIN_KERNEL;
    if v < aya::util::KernelVersion::new(maj as u8, min as u8, 0) {
        bail!(
            "kernel {v:?} is too old: the inspector needs Linux {maj}.{min} or newer \
             (bpf_xdp_load_bytes and bpf_xdp_store_bytes arrived in 5.18)"
        );
    }
    Ok(())
}

fn if_index(name: &str) -> Result<u32> {
    // SIOCGIFINDEX needs a socket of the caller's network namespace, any kind.
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .context("opening a socket to look up interfaces")?;
    rustix::net::netdevice::name_to_index(&sock, name).map_err(|_| {
        anyhow::anyhow!(
            "unknown interface `{name}` (see `ip link` for the interfaces of this network namespace)"
        )
    })
}

/// What `attach` writes into the maps besides the ports.
struct Settings {
    allowed: Vec<VerbKey>,
    config: Config,
    persist: bool,
    max_flows: Option<u32>,
    metrics: Option<std::net::SocketAddr>,
}

fn default_policy() -> Result<Vec<VerbKey>> {
    DEFAULT_ALLOWED
        .iter()
        .map(|v| loader::parse_verb(v))
        .collect()
}

fn config_word(midstream: Midstream, fragments: Fragments, monitor: bool) -> Config {
    let mut flags = 0;
    if midstream == Midstream::Drop {
        flags |= CFG_MIDSTREAM_DROP;
    }
    if fragments == Fragments::Pass {
        flags |= CFG_FRAGMENTS_PASS;
    }
    if monitor {
        flags |= CFG_MONITOR;
    }
    Config { flags, _pad: 0 }
}

fn attach(
    ifaces: &[String],
    mode: Mode,
    ports: &[u16],
    pin_dir: &Path,
    object: Option<&Path>,
    settings: &Settings,
) -> Result<()> {
    privilege::require_admin("attach")?;
    check_kernel()?;
    let mut ports = if ports.is_empty() {
        DEFAULT_PORTS.to_vec()
    } else {
        ports.to_vec()
    };
    ports.sort_unstable();
    ports.dedup();
    if ports.contains(&NEVER_INSPECTED) {
        bail!("port {NEVER_INSPECTED} carries implicit TLS (SMTPS) and cannot be inspected; remove --port {NEVER_INSPECTED}");
    }
    let mut seen = std::collections::HashSet::new();
    for i in ifaces {
        if_index(i)?;
        if !seen.insert(i) {
            bail!("interface `{i}` is named twice");
        }
    }
    let owned_object;
    let bytes: &[u8] = match object {
        Some(p) => {
            owned_object =
                std::fs::read(p).with_context(|| format!("reading eBPF object {}", p.display()))?;
            &owned_object
        }
        None => loader::EBPF_OBJECT,
    };

    let pins = PinDir::prepare(pin_dir)?;
    // Links pinned by an earlier instance (crashed, or run with --persist):
    // that instance's programs are still inspecting.
    let earlier = !links::pinned(pins.path())?.is_empty();
    let result = run_attached(ifaces, mode, &ports, &pins, bytes, settings);
    let keep = match &result {
        Ok(()) => settings.persist,
        // A failed takeover leaves the earlier instance as it was.
        Err(_) => earlier,
    };
    if keep {
        return result;
    }
    let cleanup = pins.remove(MAP_NAMES);
    result.and(cleanup)
}

fn detach(ifaces: &[String], pin_dir: &Path) -> Result<()> {
    privilege::require_admin("detach")?;
    if !pin_dir.exists() {
        bail!(
            "nothing to detach: {} does not exist (is the inspector attached with another --pin-dir?)",
            pin_dir.display()
        );
    }
    let pins = PinDir::lock_existing(pin_dir)?;
    let all = links::pinned(pins.path())?;
    let chosen: Vec<_> = all
        .iter()
        .filter(|e| ifaces.is_empty() || ifaces.contains(&e.iface))
        .collect();
    for i in ifaces {
        if !all.iter().any(|e| &e.iface == i) {
            bail!(
                "the inspector at {} is not attached to `{i}`",
                pin_dir.display()
            );
        }
    }
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

fn run_attached(
    ifaces: &[String],
    mode: Mode,
    ports: &[u16],
    pins: &PinDir,
    object: &[u8],
    settings: &Settings,
) -> Result<()> {
    // Everything that can fail comes before anything changes what the
    // kernel does: a failed takeover must leave the running instance as it
    // was (its program, its ports, its policy).
    let mut ebpf = loader::open_with(object, Some(pins.path()), settings.max_flows)?;
    match mode {
        Mode::Tc => drop(loader::load_tc(&mut ebpf)?),
        _ => drop(loader::load_xdp(&mut ebpf)?),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Bound before the readiness line below, so that whoever waits for it
    // can scrape at once.
    let metrics = match settings.metrics {
        Some(addr) => Some(rt.block_on(inspector_userspace::metrics::bind(addr))?),
        None => None,
    };
    let write_settings = |ebpf: &mut aya::Ebpf| -> Result<()> {
        loader::set_ports(ebpf, ports)?;
        loader::set_policy(ebpf, &settings.allowed)?;
        loader::set_config(ebpf, settings.config)
    };
    let takeover = !links::pinned(pins.path())?.is_empty();
    if !takeover {
        // A fresh program must never run with empty maps (no ports, a
        // policy that masks everything): settings first.
        write_settings(&mut ebpf)?;
    }
    let mut attached = Attached::attach(&mut ebpf, pins.path(), ifaces, mode)?;
    if takeover {
        // The earlier program ran with the earlier settings until the swap;
        // the new one starts with them too, then gets the new ones.
        write_settings(&mut ebpf)?;
    }
    if attached.taken_over > 0 {
        info!(
            "took over {} pinned link(s) of an earlier instance: flows keep their state",
            attached.taken_over
        );
    }
    if let Some(addr) = settings.metrics {
        info!("serving metrics on http://{addr}/metrics");
    }
    let port_list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    // Tests and scripts wait for this line: everything is in place once it
    // is printed.
    info!(
        "attached to {} (mode {}), inspecting ports {}, maps pinned in {}",
        ifaces.join(", "),
        mode.name(),
        port_list.join(","),
        pins.path().display()
    );
    rt.block_on(async {
        let serve_metrics = async {
            match metrics {
                Some(l) => inspector_userspace::metrics::serve(l, pins.path().to_path_buf()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = wait_for_signal() => r,
            r = expire_flows(pins.path()) => r,
            r = serve_metrics => r,
        }
    })?;
    if settings.persist {
        // Dropping the pinned links leaves them attached: the kernel goes on
        // inspecting until the next `attach` takes over or `detach` runs.
        drop(attached);
        info!(
            "left the inspector attached to {} (--persist); `inspector detach` removes it",
            ifaces.join(", ")
        );
    } else {
        attached.remove()?;
        info!("detached from {}", ifaces.join(", "));
    }
    Ok(())
}

/// Removes closed and idle flow entries every few seconds. Works on the
/// pinned maps, like any other process would.
async fn expire_flows(pin_dir: &Path) -> Result<()> {
    let (mut flow_map, mut counters) = flows::open_pinned(pin_dir)?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        match flows::expire(&mut flow_map, &mut counters) {
            Ok(n) if n > 0 => log::debug!("expired {n} flow entries"),
            Ok(_) => {}
            Err(e) => warn!("expiring flow entries: {e:#}"),
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

fn loaded_xdp(ebpf: &mut aya::Ebpf) -> Result<&mut aya::programs::Xdp> {
    Ok(ebpf
        .program_mut(loader::XDP_PROGRAM)
        .context("the XDP program is missing")?
        .try_into()?)
}

fn loaded_tc(ebpf: &mut aya::Ebpf) -> Result<&mut aya::programs::SchedClassifier> {
    Ok(ebpf
        .program_mut(loader::TC_PROGRAM)
        .context("the TC program is missing")?
        .try_into()?)
}

/// The links `attach` holds (all pinned), to undo them on exit.
struct Attached {
    links: Vec<(PathBuf, aya::programs::links::PinnedLink)>,
    /// Links made by this run (the others were taken over).
    made: Vec<PathBuf>,
    taken_over: usize,
}

impl Attached {
    fn attach(ebpf: &mut aya::Ebpf, pin_dir: &Path, ifaces: &[String], mode: Mode) -> Result<Self> {
        // Pinned links of another mode cannot be taken over.
        for e in links::pinned(pin_dir)? {
            let ok = matches!(
                (mode, e.hook),
                (Mode::Tc, Hook::TcIngress | Hook::TcEgress)
                    | (Mode::Xdp | Mode::XdpSkb, Hook::Xdp)
            );
            if !ok {
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
        let mut out = Attached {
            links: Vec::new(),
            made: Vec::new(),
            taken_over: 0,
        };
        let result = out.attach_all(ebpf, pin_dir, ifaces, mode);
        if result.is_err() {
            // Leave nothing half-attached: undo the links this run made
            // (taken-over ones belong to the earlier instance and stay).
            for (path, link) in std::mem::take(&mut out.links) {
                if out.made.contains(&path) {
                    let _ = link.unpin();
                }
            }
        }
        result.map(|_| out)
    }

    fn attach_all(
        &mut self,
        ebpf: &mut aya::Ebpf,
        pin_dir: &Path,
        ifaces: &[String],
        mode: Mode,
    ) -> Result<()> {
        let outcomes: Vec<(PathBuf, links::Outcome)> = match mode {
            Mode::Tc => {
                let tcx = aya::util::KernelVersion::current()
                    .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                    .unwrap_or(false);
                if !tcx {
                    bail!("--mode tc needs TCX links (Linux 6.6 or newer); use --mode xdp");
                }
                let prog = loaded_tc(ebpf)?;
                let mut v = Vec::new();
                for iface in ifaces {
                    for hook in [Hook::TcIngress, Hook::TcEgress] {
                        let o = links::attach_tc(prog, pin_dir, iface, hook)?;
                        v.push((links::link_path(pin_dir, iface, hook), o));
                    }
                }
                v
            }
            _ => {
                let prog = loaded_xdp(ebpf)?;
                let mut v = Vec::new();
                for iface in ifaces {
                    let o = links::attach_xdp(prog, pin_dir, iface, mode.xdp_mode(), |e| {
                        attach_error(iface, mode, e)
                    });
                    match o {
                        Ok(o) => v.push((links::link_path(pin_dir, iface, Hook::Xdp), o)),
                        Err(e) => {
                            for (path, o) in v {
                                self.keep(path, o);
                            }
                            return Err(e);
                        }
                    }
                }
                v
            }
        };
        for (path, o) in outcomes {
            self.keep(path, o);
        }
        Ok(())
    }

    fn keep(&mut self, path: PathBuf, o: links::Outcome) {
        if matches!(o, links::Outcome::TakenOver(_)) {
            self.taken_over += 1;
        } else {
            self.made.push(path.clone());
        }
        self.links.push((path, o.into_link()));
    }

    /// Detaches every link (unpins it, closes it).
    fn remove(&mut self) -> Result<()> {
        for (path, link) in self.links.drain(..) {
            let fd = link
                .unpin()
                .with_context(|| format!("unpinning {}", path.display()))?;
            drop(fd);
        }
        Ok(())
    }
}

fn attach_error(iface: &str, mode: Mode, e: ProgramError) -> anyhow::Error {
    let errno = match &e {
        ProgramError::SyscallError(s) => Some(rustix::io::Errno::from_io_error(&s.io_error)),
        _ => None,
    };
    use rustix::io::Errno;
    match errno.flatten() {
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

fn watch_stats(secs: f64, pin_dir: &Path) -> Result<()> {
    privilege::require_bpf("stats")?;
    if !(secs.is_finite() && secs >= 0.1) {
        bail!("--watch needs an interval of at least 0.1 seconds");
    }
    let interval = std::time::Duration::from_secs_f64(secs);
    let mut prev = stats::Snapshot::read_pinned(pin_dir)?;
    let mut prev_t = std::time::Instant::now();
    loop {
        std::thread::sleep(interval);
        let now = stats::Snapshot::read_pinned(pin_dir)?;
        let dt = prev_t.elapsed().as_secs_f64();
        prev_t = std::time::Instant::now();
        // Clear the screen and go home, like watch(1).
        print!("\x1b[2J\x1b[H");
        println!(
            "inspector stats, every {secs} s ({})  Ctrl-C to stop\n",
            pin_dir.display()
        );
        println!("{:<22} {:>14} {:>12}", "counter", "total", "per second");
        for c in &now.counters {
            let before = prev.get(c.name);
            let rate = c.value.saturating_sub(before) as f64 / dt;
            println!("{:<22} {:>14} {:>12.1}", c.name, c.value, rate);
        }
        println!(
            "{:<22} {:>14}\n{:<22} {:>14}",
            "flows_tracked", now.flows_tracked, "flows_active", now.flows_active
        );
        prev = now;
    }
}

fn print_stats(json: bool, pin_dir: &Path) -> Result<()> {
    privilege::require_bpf("stats")?;
    let snap = stats::Snapshot::read_pinned(pin_dir)?;
    if json {
        println!("{}", snap.to_json());
    } else {
        print!("{}", snap.to_table());
    }
    Ok(())
}
