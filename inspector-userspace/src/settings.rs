//! The settings of `inspector attach`, from its options and from a policy
//! file (`attach --policy FILE`), checked by one set of rules: whichever
//! way a value comes, a port, a verb or a flow-table size is refused for
//! the same reasons, and the error names the option or the file key it
//! came from. Options apply on top of the file.
//!
//! ```toml
//! # /etc/inspector/policy.toml
//! ports = [25, 587]          # inspected server ports
//! allow = ["STARTTLS"]       # added to the default (PIX/ASA) verb list
//! deny = ["VRFY"]            # removed from it
//! # allowed = ["EHLO", ...]  # or: the complete list, replacing the default
//! midstream = "drop"         # or "pass" (uninspected)
//! fragments = "drop"         # or "pass"
//! monitor = false            # true: count and report only
//! max_flows = 65536          # flow table size
//! ehlo_filter = true         # mask the EHLO keywords of denied commands
//! mask_banner = false        # true: mask the text of the 220 greeting
//! # The limits (docs/contract.md §10): log, mask, reset, drop-connection
//! # or off each; drop-connection by default, as the ASA's.
//! command_line_limit = "drop-connection"   # command line over 512 bytes (no mask)
//! rcpt_limit = "drop-connection"           # RCPT after the 100th of a transaction
//! address_length_limit = "drop-connection" # MAIL/RCPT address over 320 bytes
//! address_chars_limit = "drop-connection"  # | ` NUL or unbalanced <> in MAIL/RCPT
//! header_line_limit = "drop-connection"    # header line over 998 bytes (no mask)
//! max_flows_per_client = 256 # flows one client address may hold
//! fallback = true            # false: drop out-of-order segments
//! fallback_flow_bytes = 4194304    # what the reassembly fallback holds
//! fallback_total_bytes = 67108864  # per flow and in total,
//! fallback_hold_ms = 2000          # and for how long
//! ```

use std::{collections::BTreeSet, fmt, path::Path};

use anyhow::{Context, Result};
use inspector_common::{
    config::{
        action, limit_shift, Config, CFG_FRAGMENTS_PASS, CFG_MASK_BANNER, CFG_MIDSTREAM_PASS,
        CFG_MONITOR, CFG_NO_EHLO_FILTER, LIMIT_BITS,
    },
    fallback::{DEFAULT_FLOW_BYTES, DEFAULT_HOLD_MS, DEFAULT_TOTAL_BYTES},
    flow::DEFAULT_MAX_FLOWS_PER_CLIENT,
    ports::{DEFAULT_PORTS, NEVER_INSPECTED},
    smtp::rule,
    verbs::{VerbKey, DEFAULT_ALLOWED},
};
use serde::Deserialize;

use crate::loader::parse_verb;

/// A value the operator gave (an option, a policy-file key, a verb of
/// `inspector policy`) that the rules refuse. `main` exits with status 2
/// for it, like clap for a bad command line: the input must change, so
/// trying again (a systemd restart, say) cannot help. Other failures
/// (the kernel, the environment) are status 1.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Fails with [`Refused`].
macro_rules! refuse {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new(Refused(format!($($t)*))))
    };
}

/// Turns any error into [`Refused`], keeping its text on one line.
pub fn refused(e: anyhow::Error) -> anyhow::Error {
    if e.chain().any(|c| c.is::<Refused>()) {
        return e;
    }
    anyhow::Error::new(Refused(format!("{e:#}")))
}

/// Whether `e` (anywhere in its chain) is a refused input.
pub fn is_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Refused>())
}

/// `pass` or `drop`: for `--midstream`/`midstream` and
/// `--fragments`/`fragments`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pass,
    Drop,
}

/// What a limit does when a session goes past it (docs/contract.md §10),
/// for the `--*-limit` options, the `*_limit` keys of a policy file and
/// `inspector policy limit`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LimitAction {
    /// Count and report, change nothing.
    Log,
    /// Mask the command's verb (RCPT count, address rules only); if the
    /// verb already left in an earlier segment, reset the flow.
    Mask,
    /// Reset the flow both ways.
    Reset,
    /// Drop this and every later segment of the flow (the default).
    DropConnection,
    /// The rule is off.
    Off,
}

/// The action of every limit unless the operator says otherwise: the
/// ASA's default ESMTP policy map drops the connection (and logs).
pub const DEFAULT_LIMIT_ACTION: LimitAction = LimitAction::DropConnection;

impl LimitAction {
    /// The `config::action` code.
    pub fn code(self) -> u32 {
        match self {
            LimitAction::Log => action::LOG,
            LimitAction::Mask => action::MASK,
            LimitAction::Reset => action::RESET,
            LimitAction::DropConnection => action::DROP_CONNECTION,
            LimitAction::Off => action::OFF,
        }
    }

    /// The action of a `config::action` code.
    pub fn of_code(code: u32) -> Self {
        match code {
            action::MASK => LimitAction::Mask,
            action::RESET => LimitAction::Reset,
            action::DROP_CONNECTION => LimitAction::DropConnection,
            action::OFF => LimitAction::Off,
            _ => LimitAction::Log,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LimitAction::Log => "log",
            LimitAction::Mask => "mask",
            LimitAction::Reset => "reset",
            LimitAction::DropConnection => "drop-connection",
            LimitAction::Off => "off",
        }
    }
}

/// One limit rule, as each interface names it.
pub struct Limit {
    /// `smtp::rule` number.
    pub rule: u8,
    /// Policy-file key.
    pub key: &'static str,
    /// `attach` option.
    pub option: &'static str,
    /// Name in `inspector policy limit` and `policy show`.
    pub name: &'static str,
    /// What it matches, for messages.
    pub what: &'static str,
}

/// Every limit rule, in `smtp::rule` order.
pub const LIMITS: [Limit; 5] = [
    Limit {
        rule: rule::COMMAND_LINE,
        key: "command_line_limit",
        option: "--command-line-limit",
        name: "command-line",
        what: "a command line longer than 512 bytes",
    },
    Limit {
        rule: rule::RCPTS,
        key: "rcpt_limit",
        option: "--rcpt-limit",
        name: "rcpts",
        what: "more than 100 RCPT in a transaction",
    },
    Limit {
        rule: rule::ADDRESS_LENGTH,
        key: "address_length_limit",
        option: "--address-length-limit",
        name: "address-length",
        what: "a MAIL/RCPT address longer than 320 bytes",
    },
    Limit {
        rule: rule::ADDRESS_CHARS,
        key: "address_chars_limit",
        option: "--address-chars-limit",
        name: "address-chars",
        what: "a MAIL/RCPT argument with | ` NUL or unbalanced <>",
    },
    Limit {
        rule: rule::HEADER_LINE,
        key: "header_line_limit",
        option: "--header-line-limit",
        name: "header-line",
        what: "a header line longer than 998 bytes",
    },
];

/// Refuses an action a rule cannot have: `mask` on a rule about a whole
/// line (command line, header line), which cannot be masked without
/// changing the mail. `spelled` is how the operator named the rule.
pub fn check_limit(rule: u8, a: LimitAction, spelled: &str) -> Result<()> {
    if a == LimitAction::Mask && !rule::maskable(rule) {
        refuse!(
            "{spelled}: `mask` does not apply to a whole line (masking it would change the mail); \
             choose log, reset, drop-connection or off"
        );
    }
    Ok(())
}

/// Sets the action of limit `rule` in a configuration word.
pub fn set_limit_action(flags: &mut u32, rule: u8, a: LimitAction) {
    let shift = limit_shift(rule);
    *flags &= !(((1 << LIMIT_BITS) - 1) << shift);
    *flags |= a.code() << shift;
}

/// Settings as the operator gave them, each possibly unset: the keys of a
/// policy file, and what `attach`'s options say (see `cli.rs`).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Given {
    pub ports: Option<Vec<u16>>,
    pub allowed: Option<Vec<String>>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub midstream: Option<Action>,
    pub fragments: Option<Action>,
    pub monitor: Option<bool>,
    pub max_flows: Option<u32>,
    pub ehlo_filter: Option<bool>,
    pub mask_banner: Option<bool>,
    pub command_line_limit: Option<LimitAction>,
    pub rcpt_limit: Option<LimitAction>,
    pub address_length_limit: Option<LimitAction>,
    pub address_chars_limit: Option<LimitAction>,
    pub header_line_limit: Option<LimitAction>,
    pub max_flows_per_client: Option<u32>,
    pub fallback: Option<bool>,
    pub fallback_flow_bytes: Option<u64>,
    pub fallback_total_bytes: Option<u64>,
    pub fallback_hold_ms: Option<u64>,
}

/// How the operator spells each checked setting where it came from, so that
/// an error names what to change.
struct Spelling {
    /// Options (not file keys): the limits' names are their options.
    options: bool,
    ports: &'static str,
    allowed: &'static str,
    allow: &'static str,
    deny: &'static str,
    max_flows: &'static str,
    max_flows_per_client: &'static str,
    fallback_limits: [&'static str; 3],
}

const OPTIONS: Spelling = Spelling {
    options: true,
    ports: "--port",
    allowed: "allowed",
    allow: "--allow",
    deny: "--deny",
    max_flows: "--max-flows",
    max_flows_per_client: "--max-flows-per-client",
    fallback_limits: [
        "--fallback-flow-bytes",
        "--fallback-total-bytes",
        "--fallback-hold-ms",
    ],
};

const FILE_KEYS: Spelling = Spelling {
    options: false,
    ports: "ports",
    allowed: "allowed",
    allow: "allow",
    deny: "deny",
    max_flows: "max_flows",
    max_flows_per_client: "max_flows_per_client",
    fallback_limits: [
        "fallback_flow_bytes",
        "fallback_total_bytes",
        "fallback_hold_ms",
    ],
};

impl Given {
    /// The action given for limit `rule`, if any.
    pub fn limit(&self, rule: u8) -> Option<LimitAction> {
        match rule {
            rule::COMMAND_LINE => self.command_line_limit,
            rule::RCPTS => self.rcpt_limit,
            rule::ADDRESS_LENGTH => self.address_length_limit,
            rule::ADDRESS_CHARS => self.address_chars_limit,
            rule::HEADER_LINE => self.header_line_limit,
            _ => None,
        }
    }

    /// Reads and checks a policy file; errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("policy file {}", path.display()))
    }

    /// Parses and checks the text of a policy file.
    pub fn parse(text: &str) -> Result<Self> {
        // toml's message names the line and the key; keep it on one line.
        let g: Given = toml::from_str(text)
            .map_err(|e| Refused(e.to_string().replace('\n', " ").trim().to_string()))?;
        if g.allowed.is_some() && !(g.allow.is_empty() && g.deny.is_empty()) {
            refuse!(
                "`allowed` is the complete list of allowed verbs and `allow`/`deny` change the \
                 default list: give one or the other"
            );
        }
        g.check(&FILE_KEYS)?;
        Ok(g)
    }

    /// Checks the command-line options (the same rules as for a file).
    pub fn check_options(&self) -> Result<()> {
        self.check(&OPTIONS)
    }

    /// The one place where settings are checked.
    fn check(&self, names: &Spelling) -> Result<()> {
        if self.ports.as_ref().is_some_and(|p| p.is_empty()) {
            refuse!(
                "{}: the list is empty; name at least one port, or leave the key out for the \
                 default (25 and 587)",
                names.ports
            );
        }
        for p in self.ports.iter().flatten() {
            check_port(*p, names.ports)?;
        }
        for (key, verbs) in [
            (names.allowed, self.allowed.as_deref().unwrap_or_default()),
            (names.allow, &self.allow),
            (names.deny, &self.deny),
        ] {
            for v in verbs {
                parse_verb(v)
                    .with_context(|| key.to_string())
                    .map_err(refused)?;
            }
        }
        // The same verb allowed and denied in one place is a mistake, not
        // an order of precedence to guess.
        for v in &self.allow {
            if let Some(d) = self
                .deny
                .iter()
                .find(|d| parse_verb(d).ok() == parse_verb(v).ok())
            {
                refuse!(
                    "{} {v} and {} {d} name the same verb: keep one",
                    names.allow,
                    names.deny
                );
            }
        }
        if self.max_flows == Some(0) {
            refuse!("{} must be at least 1", names.max_flows);
        }
        if self.max_flows_per_client == Some(0) {
            refuse!("{} must be at least 1", names.max_flows_per_client);
        }
        for l in &LIMITS {
            if let Some(a) = self.limit(l.rule) {
                check_limit(l.rule, a, if names.options { l.option } else { l.key })?;
            }
        }
        for (name, v) in names.fallback_limits.iter().zip([
            self.fallback_flow_bytes,
            self.fallback_total_bytes,
            self.fallback_hold_ms,
        ]) {
            if v == Some(0) {
                refuse!("{name} must be at least 1 (to turn the fallback off: fallback = false, or --no-fallback)");
            }
        }
        Ok(())
    }
}

fn check_port(port: u16, key: &str) -> Result<()> {
    match port {
        0 => refuse!("{key}: port 0 is no port"),
        NEVER_INSPECTED => refuse!(
            "{key}: port {NEVER_INSPECTED} carries implicit TLS (SMTPS) and cannot be inspected; \
             remove it"
        ),
        _ => Ok(()),
    }
}

/// What `attach` writes into the maps, resolved from the options on top of
/// a policy file on top of the defaults.
#[derive(Debug, PartialEq, Eq)]
pub struct Settings {
    /// Inspected server ports, sorted, each once.
    pub ports: Vec<u16>,
    /// Allowed verbs, sorted.
    pub allowed: Vec<VerbKey>,
    pub config: Config,
    /// Flow-table size; `None` for the default.
    pub max_flows: Option<u32>,
    /// The reassembly fallback's limits; `None` when it is off.
    pub fallback: Option<crate::fallback::Limits>,
    /// Where the verb policy comes from, for the log: `defaults`, the
    /// file, the options.
    pub policy_origin: String,
    /// Each option that replaced or undid what the policy file says, one
    /// sentence each, for `attach` to log.
    pub overrides: Vec<String>,
}

impl Settings {
    /// Checks `options` and the policy file at `file`, and merges them:
    /// an option given wins over the file, verbs the options allow or deny
    /// apply after the file's.
    pub fn resolve(options: &Given, file: Option<&Path>) -> Result<Settings> {
        options.check_options()?;
        let (given, file_name) = match file {
            Some(p) => (Given::read(p)?, p.display().to_string()),
            None => (Given::default(), String::new()),
        };
        let overrides = overrides(options, &given, &file_name);
        let file = given;
        let base = match &file.allowed {
            Some(list) => with_changes(&[], list, &[])?,
            None => default_policy(),
        };
        let base = with_changes(&base, &file.allow, &file.deny)?;
        let allowed = with_changes(&base, &options.allow, &options.deny)?;
        let mut origin = Vec::new();
        if file.allowed.is_none() {
            origin.push("the default list".to_string());
        }
        if !file_name.is_empty() {
            origin.push(format!("policy file {file_name}"));
        }
        for (opt, verbs) in [("--allow", &options.allow), ("--deny", &options.deny)] {
            if !verbs.is_empty() {
                origin.push(format!("{opt} {}", verbs.join(" ")));
            }
        }
        let mut ports = options
            .ports
            .clone()
            .or(file.ports.clone())
            .unwrap_or_else(|| DEFAULT_PORTS.to_vec());
        ports.sort_unstable();
        ports.dedup();
        let midstream = options.midstream.or(file.midstream).unwrap_or(Action::Drop);
        let fragments = options.fragments.or(file.fragments).unwrap_or(Action::Drop);
        let monitor = options.monitor.or(file.monitor).unwrap_or(false);
        let mut config = config_word(
            midstream,
            fragments,
            monitor,
            options
                .max_flows_per_client
                .or(file.max_flows_per_client)
                .unwrap_or(DEFAULT_MAX_FLOWS_PER_CLIENT),
        );
        if !options.ehlo_filter.or(file.ehlo_filter).unwrap_or(true) {
            config.flags |= CFG_NO_EHLO_FILTER;
        }
        if options.mask_banner.or(file.mask_banner).unwrap_or(false) {
            config.flags |= CFG_MASK_BANNER;
        }
        for l in &LIMITS {
            let given = options.limit(l.rule).or(file.limit(l.rule));
            set_limit_action(
                &mut config.flags,
                l.rule,
                given.unwrap_or(DEFAULT_LIMIT_ACTION),
            );
        }
        Ok(Settings {
            ports,
            allowed,
            config,
            max_flows: options.max_flows.or(file.max_flows),
            fallback: options.fallback.or(file.fallback).unwrap_or(true).then(|| {
                crate::fallback::Limits {
                    flow_bytes: options
                        .fallback_flow_bytes
                        .or(file.fallback_flow_bytes)
                        .unwrap_or(DEFAULT_FLOW_BYTES),
                    total_bytes: options
                        .fallback_total_bytes
                        .or(file.fallback_total_bytes)
                        .unwrap_or(DEFAULT_TOTAL_BYTES),
                    hold: std::time::Duration::from_millis(
                        options
                            .fallback_hold_ms
                            .or(file.fallback_hold_ms)
                            .unwrap_or(DEFAULT_HOLD_MS),
                    ),
                }
            }),
            policy_origin: origin.join(", "),
            overrides,
        })
    }
}

/// What the options change of what the file says, one sentence each.
fn overrides(options: &Given, file: &Given, file_name: &str) -> Vec<String> {
    fn show<T: fmt::Debug>(v: &T) -> String {
        format!("{v:?}").to_lowercase()
    }
    let mut out = Vec::new();
    let mut note = |opt: &str, key: &str, opt_v: String, file_v: String| {
        out.push(format!(
            "{opt} {opt_v} replaces {key} = {file_v} of policy file {file_name}"
        ));
    };
    if let (Some(o), Some(f)) = (&options.ports, &file.ports) {
        note("--port", "ports", show(o), show(f));
    }
    if let (Some(o), Some(f)) = (options.midstream, file.midstream) {
        note("--midstream", "midstream", show(&o), show(&f));
    }
    if let (Some(o), Some(f)) = (options.fragments, file.fragments) {
        note("--fragments", "fragments", show(&o), show(&f));
    }
    if let (Some(o), Some(f)) = (options.monitor, file.monitor) {
        note("--monitor", "monitor", show(&o), show(&f));
    }
    if let (Some(o), Some(f)) = (options.max_flows, file.max_flows) {
        note("--max-flows", "max_flows", o.to_string(), f.to_string());
    }
    let same = |a: &String, b: &String| parse_verb(a).ok() == parse_verb(b).ok();
    for v in &options.allow {
        if file.deny.iter().any(|d| same(d, v)) {
            out.push(format!(
                "--allow {v} undoes deny = [.. {v} ..] of policy file {file_name}"
            ));
        }
    }
    let file_allows = file.allow.iter().chain(file.allowed.iter().flatten());
    for d in file_allows {
        if options.deny.iter().any(|v| same(d, v)) {
            out.push(format!(
                "--deny {d} undoes the policy file {file_name}, which allows it"
            ));
        }
    }
    out
}

/// The verbs the default policy allows.
pub fn default_policy() -> Vec<VerbKey> {
    DEFAULT_ALLOWED
        .iter()
        .map(|v| parse_verb(v).expect("the default policy holds verbs"))
        .collect()
}

/// `base` with `allow` added and `deny` removed; fails on a word that is
/// not a verb.
pub fn with_changes(base: &[VerbKey], allow: &[String], deny: &[String]) -> Result<Vec<VerbKey>> {
    let mut set: BTreeSet<VerbKey> = base.iter().copied().collect();
    for v in allow {
        set.insert(parse_verb(v).map_err(refused)?);
    }
    for v in deny {
        set.remove(&parse_verb(v).map_err(refused)?);
    }
    Ok(set.into_iter().collect())
}

fn config_word(
    midstream: Action,
    fragments: Action,
    monitor: bool,
    max_flows_per_client: u32,
) -> Config {
    let mut flags = 0;
    if midstream == Action::Pass {
        flags |= CFG_MIDSTREAM_PASS;
    }
    if fragments == Action::Pass {
        flags |= CFG_FRAGMENTS_PASS;
    }
    if monitor {
        flags |= CFG_MONITOR;
    }
    Config {
        flags,
        max_flows_per_client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inspector_common::config::CFG_SWITCHES;

    #[test]
    fn parses_every_key() {
        let f = Given::parse(
            "ports = [25, 2525]\nallow = [\"starttls\"]\ndeny = [\"VRFY\"]\nmidstream = \"drop\"\n\
             fragments = \"pass\"\nmonitor = true\nmax_flows = 1000\nehlo_filter = false\n\
             mask_banner = true\ncommand_line_limit = \"drop-connection\"\nrcpt_limit = \"reset\"\n",
        )
        .unwrap();
        assert_eq!(f.rcpt_limit, Some(LimitAction::Reset));
        assert_eq!(f.command_line_limit, Some(LimitAction::DropConnection));
        assert_eq!(f.ehlo_filter, Some(false));
        assert_eq!(f.mask_banner, Some(true));
        assert_eq!(f.ports, Some(vec![25, 2525]));
        assert_eq!(f.midstream, Some(Action::Drop));
        assert_eq!(f.fragments, Some(Action::Pass));
        assert_eq!(f.monitor, Some(true));
        assert_eq!(f.max_flows, Some(1000));
    }

    /// Every limit is drop-connection unless told (the ASA's default);
    /// each key and option sets its own rule's field only.
    #[test]
    fn limits_default_to_drop_connection_and_each_key_sets_its_rule() {
        use inspector_common::config::limit_action;
        let s = Settings::resolve(&Given::default(), None).unwrap();
        for l in &LIMITS {
            assert_eq!(
                limit_action(s.config.flags, l.rule),
                action::DROP_CONNECTION,
                "{}",
                l.key
            );
        }
        let f = Given::parse(
            "command_line_limit = \"log\"\nrcpt_limit = \"mask\"\naddress_length_limit = \"reset\"\n\
             address_chars_limit = \"off\"\nheader_line_limit = \"reset\"\n",
        )
        .unwrap();
        let options = Given {
            address_length_limit: Some(LimitAction::Mask),
            ..Given::default()
        };
        let dir = std::env::temp_dir().join(format!("inspector-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.toml");
        std::fs::write(
            &file,
            "command_line_limit = \"log\"\nrcpt_limit = \"mask\"\naddress_length_limit = \"reset\"\n\
             address_chars_limit = \"off\"\nheader_line_limit = \"reset\"\n",
        )
        .unwrap();
        let s = Settings::resolve(&options, Some(&file)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let got: Vec<u32> = LIMITS
            .iter()
            .map(|l| limit_action(s.config.flags, l.rule))
            .collect();
        assert_eq!(
            got,
            [
                action::LOG,
                action::MASK,
                action::MASK,
                action::OFF,
                action::RESET
            ]
        );
        assert_eq!(f.limit(rule::HEADER_LINE), Some(LimitAction::Reset));
        assert_eq!(s.config.flags & CFG_SWITCHES, 0);
        // An option that cannot be: named as the option.
        let bad = Given {
            header_line_limit: Some(LimitAction::Mask),
            ..Given::default()
        };
        let e = format!("{:#}", Settings::resolve(&bad, None).unwrap_err());
        assert!(e.contains("--header-line-limit: `mask`"), "{e}");
    }

    #[test]
    fn the_fallback_is_on_by_default_with_its_limits_from_file_and_options() {
        use std::time::Duration;
        let s = Settings::resolve(&Given::default(), None).unwrap();
        assert_eq!(
            s.fallback,
            Some(crate::fallback::Limits {
                flow_bytes: DEFAULT_FLOW_BYTES,
                total_bytes: DEFAULT_TOTAL_BYTES,
                hold: Duration::from_millis(DEFAULT_HOLD_MS),
            })
        );
        let file = Given::parse(
            "fallback_flow_bytes = 1000\nfallback_total_bytes = 5000\nfallback_hold_ms = 300\n",
        )
        .unwrap();
        assert_eq!(file.fallback_flow_bytes, Some(1000));
        let off = Given {
            fallback: Some(false),
            ..Given::default()
        };
        assert_eq!(Settings::resolve(&off, None).unwrap().fallback, None);
        for (given, why) in [
            (
                Given {
                    fallback_hold_ms: Some(0),
                    ..Given::default()
                },
                "--fallback-hold-ms must be at least 1",
            ),
            (
                Given {
                    fallback_flow_bytes: Some(0),
                    ..Given::default()
                },
                "--fallback-flow-bytes must be at least 1",
            ),
        ] {
            let e = Settings::resolve(&given, None).unwrap_err();
            assert!(is_refused(&e));
            assert!(format!("{e:#}").contains(why), "{e:#}");
        }
        let e = Given::parse("fallback_total_bytes = 0\n").unwrap_err();
        assert!(format!("{e:#}").contains("fallback_total_bytes must be at least 1"));
    }

    #[test]
    fn ehlo_filter_on_and_banner_masking_off_by_default() {
        let s = Settings::resolve(&Given::default(), None).unwrap();
        assert_eq!(s.config.flags & (CFG_NO_EHLO_FILTER | CFG_MASK_BANNER), 0);
        let options = Given {
            ehlo_filter: Some(false),
            mask_banner: Some(true),
            ..Given::default()
        };
        let s = Settings::resolve(&options, None).unwrap();
        assert_eq!(
            s.config.flags & (CFG_NO_EHLO_FILTER | CFG_MASK_BANNER),
            CFG_NO_EHLO_FILTER | CFG_MASK_BANNER
        );
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (text, why) in [
            ("colour = 1", "unknown field"),
            ("allow = [\"NOT A VERB\"]", "is not a verb"),
            ("midstream = \"maybe\"", "unknown variant"),
            ("mask_banner = \"yes\"", "invalid type"),
            (
                "command_line_limit = \"mask\"",
                "command_line_limit: `mask` does not apply",
            ),
            (
                "header_line_limit = \"mask\"",
                "header_line_limit: `mask` does not apply",
            ),
            ("rcpt_limit = \"block\"", "unknown variant"),
            ("ports = [70000]", "invalid value"),
            ("max_flows = 0", "max_flows must be at least 1"),
            ("ports = [25, 465]", "implicit TLS"),
            ("ports = [0]", "port 0"),
            ("ports = [", "TOML"),
            ("ports = []", "the list is empty"),
            ("allow = [\"X\"]\nallowed = [\"EHLO\"]", "one or the other"),
            ("deny = [\"X\"]\nallowed = [\"EHLO\"]", "one or the other"),
            (
                "allow = [\"VRFY\"]\ndeny = [\"vrfy\"]",
                "name the same verb",
            ),
        ] {
            let e = Given::parse(text).unwrap_err();
            assert!(is_refused(&e), "{text}: not a refusal: {e:#}");
            let e = format!("{e:#}");
            assert!(e.contains(why) || why == "TOML", "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: multi-line error {e}");
        }
    }

    /// Every value a policy file refuses is refused as an option too, and
    /// the error names the option.
    #[test]
    fn options_follow_the_file_rules() {
        let cases = [
            (
                Given {
                    ports: Some(vec![25, 465]),
                    ..Given::default()
                },
                "--port: port 465",
            ),
            (
                Given {
                    ports: Some(vec![0]),
                    ..Given::default()
                },
                "--port: port 0",
            ),
            (
                Given {
                    allow: vec!["NOT A VERB".into()],
                    ..Given::default()
                },
                "--allow: `NOT A VERB` is not a verb",
            ),
            (
                Given {
                    deny: vec!["TOOLONGVERB".into()],
                    ..Given::default()
                },
                "--deny: `TOOLONGVERB` is not a verb",
            ),
            (
                Given {
                    max_flows: Some(0),
                    ..Given::default()
                },
                "--max-flows must be at least 1",
            ),
        ];
        let both = Given {
            allow: vec!["XFOO".into()],
            deny: vec!["xfoo".into()],
            ..Given::default()
        };
        let cases = cases.into_iter().chain([
            (both, "--allow XFOO and --deny xfoo name the same verb"),
            (
                Given {
                    ports: Some(vec![]),
                    ..Given::default()
                },
                "--port: the list is empty",
            ),
        ]);
        for (given, why) in cases {
            let e = Settings::resolve(&given, None).unwrap_err();
            assert!(is_refused(&e), "{given:?}: not a refusal: {e:#}");
            let e = format!("{e:#}");
            assert!(e.contains(why), "{given:?}: {e}");
        }
    }

    #[test]
    fn options_apply_on_top_of_the_file() {
        let dir = std::env::temp_dir().join(format!("inspector-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.toml");
        std::fs::write(
            &file,
            "ports = [2525]\ndeny = [\"VRFY\"]\nmidstream = \"pass\"\nmax_flows = 10\n",
        )
        .unwrap();
        let options = Given {
            allow: vec!["vrfy".into(), "STARTTLS".into()],
            fragments: Some(Action::Pass),
            max_flows: Some(20),
            ..Given::default()
        };
        let s = Settings::resolve(&options, Some(&file)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.ports, [2525], "the file's ports when no --port");
        let mut want = default_policy();
        want.push(parse_verb("STARTTLS").unwrap());
        want.sort();
        assert_eq!(s.allowed, want, "--allow VRFY undoes the file's deny");
        assert_eq!(
            s.config.flags & CFG_SWITCHES,
            CFG_MIDSTREAM_PASS | CFG_FRAGMENTS_PASS
        );
        assert_eq!(s.max_flows, Some(20));
        let file_name = file.display().to_string();
        assert_eq!(
            s.overrides,
            [
                format!("--max-flows 20 replaces max_flows = 10 of policy file {file_name}"),
                format!("--allow vrfy undoes deny = [.. vrfy ..] of policy file {file_name}"),
            ]
        );
        assert_eq!(
            s.policy_origin,
            format!("the default list, policy file {file_name}, --allow vrfy STARTTLS")
        );

        let s = Settings::resolve(&Given::default(), None).unwrap();
        assert_eq!(s.ports, DEFAULT_PORTS);
        let mut want = default_policy();
        want.sort();
        assert_eq!(s.allowed, want);
        assert_eq!(
            s.config.flags & CFG_SWITCHES,
            0,
            "midstream dropped, fragments dropped"
        );
        assert_eq!(s.config.max_flows_per_client, DEFAULT_MAX_FLOWS_PER_CLIENT);
        assert_eq!(s.max_flows, None);
    }
}
