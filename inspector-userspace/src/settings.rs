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
//! max_flows_per_client = 256 # flows one client address may hold
//! ```

use std::{collections::BTreeSet, path::Path};

use anyhow::{bail, Context, Result};
use inspector_common::{
    config::{Config, CFG_FRAGMENTS_PASS, CFG_MIDSTREAM_PASS, CFG_MONITOR},
    flow::DEFAULT_MAX_FLOWS_PER_CLIENT,
    ports::{DEFAULT_PORTS, NEVER_INSPECTED},
    verbs::{VerbKey, DEFAULT_ALLOWED},
};
use serde::Deserialize;

use crate::loader::parse_verb;

/// `pass` or `drop`: for `--midstream`/`midstream` and
/// `--fragments`/`fragments`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pass,
    Drop,
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
    pub max_flows_per_client: Option<u32>,
}

/// How the operator spells each checked setting where it came from, so that
/// an error names what to change.
struct Spelling {
    ports: &'static str,
    allowed: &'static str,
    allow: &'static str,
    deny: &'static str,
    max_flows: &'static str,
    max_flows_per_client: &'static str,
}

const OPTIONS: Spelling = Spelling {
    ports: "--port",
    allowed: "allowed",
    allow: "--allow",
    deny: "--deny",
    max_flows: "--max-flows",
    max_flows_per_client: "--max-flows-per-client",
};

const FILE_KEYS: Spelling = Spelling {
    ports: "ports",
    allowed: "allowed",
    allow: "allow",
    deny: "deny",
    max_flows: "max_flows",
    max_flows_per_client: "max_flows_per_client",
};

impl Given {
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
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', " ").trim()))?;
        g.check(&FILE_KEYS)?;
        Ok(g)
    }

    /// Checks the command-line options (the same rules as for a file).
    pub fn check_options(&self) -> Result<()> {
        self.check(&OPTIONS)
    }

    /// The one place where settings are checked.
    fn check(&self, names: &Spelling) -> Result<()> {
        for p in self.ports.iter().flatten() {
            check_port(*p, names.ports)?;
        }
        for (key, verbs) in [
            (names.allowed, self.allowed.as_deref().unwrap_or_default()),
            (names.allow, &self.allow),
            (names.deny, &self.deny),
        ] {
            for v in verbs {
                parse_verb(v).with_context(|| key.to_string())?;
            }
        }
        if self.max_flows == Some(0) {
            bail!("{} must be at least 1", names.max_flows);
        }
        if self.max_flows_per_client == Some(0) {
            bail!("{} must be at least 1", names.max_flows_per_client);
        }
        Ok(())
    }
}

fn check_port(port: u16, key: &str) -> Result<()> {
    match port {
        0 => bail!("{key}: port 0 is no port"),
        NEVER_INSPECTED => bail!(
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
}

impl Settings {
    /// Checks `options` and the policy file at `file`, and merges them:
    /// an option given wins over the file, verbs the options allow or deny
    /// apply after the file's.
    pub fn resolve(options: &Given, file: Option<&Path>) -> Result<Settings> {
        options.check_options()?;
        let file = match file {
            Some(p) => Given::read(p)?,
            None => Given::default(),
        };
        let base = match &file.allowed {
            Some(list) => with_changes(&[], list, &[])?,
            None => default_policy(),
        };
        let base = with_changes(&base, &file.allow, &file.deny)?;
        let allowed = with_changes(&base, &options.allow, &options.deny)?;
        let mut ports = options
            .ports
            .clone()
            .or(file.ports)
            .unwrap_or_else(|| DEFAULT_PORTS.to_vec());
        ports.sort_unstable();
        ports.dedup();
        let midstream = options.midstream.or(file.midstream).unwrap_or(Action::Drop);
        let fragments = options.fragments.or(file.fragments).unwrap_or(Action::Drop);
        let monitor = options.monitor.or(file.monitor).unwrap_or(false);
        Ok(Settings {
            ports,
            allowed,
            config: config_word(
                midstream,
                fragments,
                monitor,
                options
                    .max_flows_per_client
                    .or(file.max_flows_per_client)
                    .unwrap_or(DEFAULT_MAX_FLOWS_PER_CLIENT),
            ),
            max_flows: options.max_flows.or(file.max_flows),
        })
    }
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
        set.insert(parse_verb(v)?);
    }
    for v in deny {
        set.remove(&parse_verb(v)?);
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

    #[test]
    fn parses_every_key() {
        let f = Given::parse(
            "ports = [25, 2525]\nallow = [\"starttls\"]\ndeny = [\"VRFY\"]\nmidstream = \"drop\"\n\
             fragments = \"pass\"\nmonitor = true\nmax_flows = 1000\n",
        )
        .unwrap();
        assert_eq!(f.ports, Some(vec![25, 2525]));
        assert_eq!(f.midstream, Some(Action::Drop));
        assert_eq!(f.fragments, Some(Action::Pass));
        assert_eq!(f.monitor, Some(true));
        assert_eq!(f.max_flows, Some(1000));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (text, why) in [
            ("colour = 1", "unknown field"),
            ("allow = [\"NOT A VERB\"]", "is not a verb"),
            ("midstream = \"maybe\"", "unknown variant"),
            ("ports = [70000]", "invalid value"),
            ("max_flows = 0", "max_flows must be at least 1"),
            ("ports = [25, 465]", "implicit TLS"),
            ("ports = [0]", "port 0"),
            ("ports = [", "TOML"),
        ] {
            let e = format!("{:#}", Given::parse(text).unwrap_err());
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
        for (given, why) in cases {
            let e = format!("{:#}", Settings::resolve(&given, None).unwrap_err());
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
        assert_eq!(s.config.flags, CFG_MIDSTREAM_PASS | CFG_FRAGMENTS_PASS);
        assert_eq!(s.max_flows, Some(20));

        let s = Settings::resolve(&Given::default(), None).unwrap();
        assert_eq!(s.ports, DEFAULT_PORTS);
        let mut want = default_policy();
        want.sort();
        assert_eq!(s.allowed, want);
        assert_eq!(s.config.flags, 0, "midstream dropped, fragments dropped");
        assert_eq!(s.config.max_flows_per_client, DEFAULT_MAX_FLOWS_PER_CLIENT);
        assert_eq!(s.max_flows, None);
    }
}
