//! The command line: what `inspector --help` shows, and nothing else.
//! Parsing only: the checks on the values live with the settings they make
//! (`settings.rs`, the same rules as for the policy file) or with the
//! command that uses them (`cmd/`).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use inspector_userspace::{
    links::Mode,
    pin::DEFAULT_PIN_DIR,
    settings::{Action, Given, LimitAction},
};

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
        Exit status: 0 success (also `detach` with nothing attached, and output into a \
        pipe whose reader went away), 1 error (one line on stderr says what and what to \
        do), 2 refused input: a bad option, value, verb or policy file.",
    after_help = "Examples:\n  \
        inspector attach --iface eth0 --iface eth1\n  \
        inspector stats\n  \
        inspector stats --json"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    Attach(AttachArgs),
    /// Show what is attached where, the live policy, flows and uptime.
    #[command(after_help = "Examples:\n  inspector status\n  inspector status --json")]
    Status(StatusArgs),
    /// Remove what `attach` left attached or pinned (after `attach --persist`
    /// or a crash). With --iface, only that interface's hooks.
    #[command(after_help = "Examples:\n  inspector detach\n  inspector detach --iface eth1")]
    Detach(DetachArgs),
    /// Show or change the verb policy of a running `inspector attach`, live.
    ///
    /// Changes apply to the next command of every flow, without reloading
    /// anything and without disturbing sessions in progress.
    #[command(after_help = "Examples:\n  \
        inspector policy show\n  \
        inspector policy allow STARTTLS\n  \
        inspector policy deny VRFY EXPN")]
    Policy(PolicyArgs),
    /// Stream masked-command and drop events of a running `inspector attach`.
    ///
    /// One line per event: time, action (mask, drop, would-mask in monitor
    /// mode), client and server address and port, the verb (upper-cased,
    /// printable characters, first 8) and, for drops, the reason. Runs
    /// until interrupted. While `attach` runs, the events come from it
    /// (starting with up to the last 256), and any number of readers may
    /// run; without it, `events` reads the kernel's event ring itself, and
    /// only one reader should run then.
    #[command(after_help = "Example:\n  inspector events --json | jq 'select(.action==\"mask\")'")]
    Events(EventsArgs),
    /// Print the counters of a running `inspector attach`.
    ///
    /// Reads the per-CPU counter map pinned by `attach` and prints each
    /// counter summed over all CPUs. Safe to run at any time, from any
    /// process with CAP_BPF.
    #[command(
        after_help = "Examples:\n  inspector stats\n  inspector stats --json | jq .packets_inspected"
    )]
    Stats(StatsArgs),
    /// Print a shell completion script for SHELL on stdout.
    #[command(after_help = "Examples:\n  \
        inspector completions bash > /etc/bash_completion.d/inspector\n  \
        inspector completions zsh > /usr/local/share/zsh/site-functions/_inspector")]
    Completions(CompletionsArgs),
    /// Print the man page inspector(8), in roff, on stdout.
    #[command(after_help = "Example:\n  inspector man > /usr/local/share/man/man8/inspector.8")]
    Man,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

// The options structs carry no doc comment of their own: the subcommand's
// help comes from its variant above.

#[derive(Args)]
pub struct AttachArgs {
    /// Interface to attach to (repeat for each; a gateway needs both sides).
    #[arg(long = "iface", short = 'i', required = true, value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Hook: `xdp` lets the kernel choose native or generic XDP,
    /// `xdp-skb` forces generic XDP, `tc` attaches to clsact ingress and
    /// egress (for a host that runs the MTA itself, or where XDP does not
    /// fit).
    #[arg(long, value_enum, default_value_t = Mode::Xdp)]
    pub mode: Mode,
    /// Inspected server port (repeat for each). Default: 25 and 587.
    /// Port 465 (implicit TLS) cannot be inspected and is refused.
    #[arg(long = "port", short = 'p', value_name = "N")]
    pub ports: Vec<u16>,
    /// Folder on a bpf filesystem for the pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// Load this eBPF object file instead of the embedded one (to try a
    /// custom build of the kernel programs).
    #[arg(long, value_name = "FILE")]
    pub object: Option<PathBuf>,
    /// Also allow VERB (repeat for each), on top of the fifteen verbs of
    /// the default policy. Example: --allow STARTTLS
    #[arg(long = "allow", value_name = "VERB")]
    pub allow: Vec<String>,
    /// Mask VERB although the default policy allows it (repeat for each).
    /// Example: --deny VRFY
    #[arg(long = "deny", value_name = "VERB")]
    pub deny: Vec<String>,
    /// What to do with payload of flows whose start the inspector did not
    /// see (opened before it was attached): `drop` them (the default: they
    /// cannot be read safely, and the client retries) or `pass` them
    /// uninspected. Both are counted as midstream.
    #[arg(long, value_enum)]
    pub midstream: Option<Action>,
    /// IP fragments of inspected flows cannot be inspected: `drop` them
    /// (the default) or `pass` them uninspected.
    #[arg(long, value_enum)]
    pub fragments: Option<Action>,
    /// Count and report what would be masked or dropped, but change and
    /// drop nothing.
    #[arg(long)]
    pub monitor: bool,
    /// Do not filter the server's replies to EHLO (by default the keyword
    /// of every extension whose command the policy denies is masked, so
    /// that clients never try it: 250-CHUNKING becomes 250-XXXXXXXX).
    #[arg(long)]
    pub no_ehlo_filter: bool,
    /// Mask the text of the server's 220 greeting (server software and
    /// version), keeping its length.
    #[arg(long)]
    pub mask_banner: bool,
    /// What to do with a command line longer than 512 bytes: `log` (count
    /// and report), `reset` the flow, `drop-connection` (drop every later
    /// segment of the flow; the default of every limit, as the ASA's) or
    /// `off`.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub command_line_limit: Option<LimitAction>,
    /// What to do with every RCPT after the 100th of a transaction: the
    /// same actions, or `mask` (the RCPT's verb; a reset if the verb
    /// already passed in an earlier segment).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub rcpt_limit: Option<LimitAction>,
    /// What to do with a MAIL/RCPT address longer than 320 bytes: the
    /// same actions as --rcpt-limit.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub address_length_limit: Option<LimitAction>,
    /// What to do with a MAIL/RCPT argument holding `|`, a backquote, NUL
    /// or unbalanced `<>`: the same actions as --rcpt-limit.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub address_chars_limit: Option<LimitAction>,
    /// What to do with a header line longer than 998 bytes in a message's
    /// header section (DATA; BDAT chunks are not parsed): the same actions
    /// as --command-line-limit.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub header_line_limit: Option<LimitAction>,
    /// Read settings from a TOML policy file (ports, allow/deny/allowed,
    /// midstream, fragments, monitor, max_flows, max_flows_per_client,
    /// ehlo_filter, mask_banner, limits, fallback and its limits); options given on the
    /// command line apply on top. See README "Policy file".
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Serve the counters in Prometheus text format on ADDR, e.g.
    /// 127.0.0.1:9725 (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Flow table size (entries). When it is full, new flows are refused
    /// (flows_refused); no flow is evicted. Default 65536, about 41 MB.
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u32>,
    /// Flows one client address may have in the table at once; more are
    /// refused (flows_refused). Default 256, far above what a real MTA opens.
    #[arg(long, value_name = "N")]
    pub max_flows_per_client: Option<u32>,
    /// Drop client segments that arrive out of order (TCP retransmits
    /// them) instead of holding them in the reassembly fallback until the
    /// bytes before them have passed.
    #[arg(long)]
    pub no_fallback: bool,
    /// Bytes the reassembly fallback holds for one flow (default 4194304,
    /// a Linux server's largest default receive window); past it, segments
    /// are dropped and retransmitted.
    #[arg(long, value_name = "BYTES")]
    pub fallback_flow_bytes: Option<u64>,
    /// Bytes the reassembly fallback holds in total (default 67108864).
    #[arg(long, value_name = "BYTES")]
    pub fallback_total_bytes: Option<u64>,
    /// How long the reassembly fallback holds a segment before dropping it
    /// (default 2000).
    #[arg(long, value_name = "MS")]
    pub fallback_hold_ms: Option<u64>,
    /// On SIGINT/SIGTERM, leave the programs attached and the maps
    /// pinned: the kernel keeps inspecting, and the next `attach` on the
    /// same pin dir takes over without losing flow state (upgrades,
    /// restarts). `inspector detach` removes everything.
    #[arg(long)]
    pub persist: bool,
}

impl AttachArgs {
    /// The settings given as options, in the shape a policy file gives
    /// them, so that both go through the same checks.
    pub fn given(&self) -> Given {
        Given {
            ports: (!self.ports.is_empty()).then(|| self.ports.clone()),
            allowed: None,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            midstream: self.midstream,
            fragments: self.fragments,
            monitor: self.monitor.then_some(true),
            max_flows: self.max_flows,
            ehlo_filter: self.no_ehlo_filter.then_some(false),
            mask_banner: self.mask_banner.then_some(true),
            command_line_limit: self.command_line_limit,
            rcpt_limit: self.rcpt_limit,
            address_length_limit: self.address_length_limit,
            address_chars_limit: self.address_chars_limit,
            header_line_limit: self.header_line_limit,
            max_flows_per_client: self.max_flows_per_client,
            fallback: self.no_fallback.then_some(false),
            fallback_flow_bytes: self.fallback_flow_bytes,
            fallback_total_bytes: self.fallback_total_bytes,
            fallback_hold_ms: self.fallback_hold_ms,
        }
    }
}

#[derive(Args)]
pub struct StatusArgs {
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
    /// Pin dir of the inspector.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

#[derive(Args)]
pub struct DetachArgs {
    /// Only detach from this interface (repeat for each).
    #[arg(long = "iface", short = 'i', value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Pin dir of the inspector to remove.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub action: PolicyAction,
    /// Pin dir of the running `attach`.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR", global = true)]
    pub pin_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Print the allowed verbs (everything else is masked) and whether the
    /// EHLO filter and banner masking are on.
    Show {
        /// As a JSON object: {"allowed": [...], "ehlo_filter": bool,
        /// "mask_banner": bool}.
        #[arg(long)]
        json: bool,
    },
    /// Allow verbs (case-insensitive), now; with --permanent also in the
    /// policy file, so that the next start of `attach` keeps them.
    Allow {
        #[arg(required = true, value_name = "VERB")]
        verbs: Vec<String>,
        #[command(flatten)]
        permanent: Permanent,
    },
    /// Mask verbs (case-insensitive), now; with --permanent also in the
    /// policy file.
    Deny {
        #[arg(required = true, value_name = "VERB")]
        verbs: Vec<String>,
        #[command(flatten)]
        permanent: Permanent,
    },
    /// Turn a filter of the server's side on or off, now; with
    /// --permanent also in the policy file: `ehlo-filter` masks, in
    /// replies to EHLO, the keyword of every extension whose command is
    /// denied; `mask-banner` masks the text of the 220 greeting.
    #[command(after_help = "Example:\n  inspector policy set mask-banner on --permanent")]
    Set {
        #[arg(value_enum)]
        switch: Switch,
        #[arg(value_enum)]
        value: OnOff,
        #[command(flatten)]
        permanent: Permanent,
    },
    /// Set the action of a limit, now; with --permanent also in the policy
    /// file: `command-line` (a command line longer than 512 bytes),
    /// `rcpts` (every RCPT after the 100th of a transaction),
    /// `address-length` (a MAIL/RCPT address longer than 320 bytes),
    /// `address-chars` (`|`, backquote, NUL or unbalanced `<>` in a
    /// MAIL/RCPT argument) or `header-line` (a header line longer than 998
    /// bytes) gets `log`, `mask` (not for command-line and header-line),
    /// `reset`, `drop-connection` or `off`.
    #[command(after_help = "Example:\n  inspector policy limit address-chars mask --permanent")]
    Limit {
        #[arg(value_enum)]
        rule: LimitRule,
        #[arg(value_enum)]
        action: LimitAction,
        #[command(flatten)]
        permanent: Permanent,
    },
}

/// A limit of `inspector policy limit` (in `smtp::rule` order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LimitRule {
    CommandLine,
    Rcpts,
    AddressLength,
    AddressChars,
    HeaderLine,
}

/// A switch of `inspector policy set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    EhloFilter,
    MaskBanner,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Where a live change is also written, like firewalld's runtime and
/// permanent configurations: without --permanent a change lasts until the
/// next start of `attach`, which applies the policy file (and options).
#[derive(Args)]
pub struct Permanent {
    /// Also write the change into the policy file (`allow`/`deny`, or the
    /// `allowed` list if the file has one; the switch's or the limit's
    /// key), comments and other keys kept.
    #[arg(long)]
    pub permanent: bool,
    /// The policy file `attach --policy` reads.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_POLICY_FILE, requires = "permanent")]
    pub policy: PathBuf,
}

/// The policy file of the systemd unit (deploy/inspector.service).
pub const DEFAULT_POLICY_FILE: &str = "/etc/inspector/policy.toml";

#[derive(Args)]
pub struct EventsArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Pin dir of the running `attach`.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Print one JSON object whose keys are the counter names (with
    /// --watch: one object a line, with per-second rates).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds with per-second rates, until Ctrl-C.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
    /// Pin dir of the running `attach`.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}
