//! The policy file (`attach --policy FILE`): the same settings as the
//! command-line options, for deployments. Command-line options apply on top
//! of the file.
//!
//! ```toml
//! # /etc/inspector/policy.toml
//! ports = [25, 587]          # inspected server ports
//! allow = ["STARTTLS"]       # added to the default (PIX/ASA) verb list
//! deny = ["VRFY"]            # removed from it
//! # allowed = ["EHLO", ...]  # or: the complete list, replacing the default
//! midstream = "pass"         # or "drop"
//! fragments = "drop"         # or "pass"
//! monitor = false            # true: count and report only
//! max_flows = 65536          # flow table size
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
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
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pass,
    Drop,
}

impl PolicyFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("policy file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        // toml's message names the line and the key; keep it on one line.
        let f: PolicyFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', " ").trim()))?;
        for v in f.allowed.iter().flatten().chain(&f.allow).chain(&f.deny) {
            crate::loader::parse_verb(v)?;
        }
        if let Some(p) = f.ports.iter().flatten().find(|p| **p == 465 || **p == 0) {
            anyhow::bail!(
                "ports: port {p} cannot be inspected (465 carries implicit TLS, 0 is no port)"
            );
        }
        if let Some(0) = f.max_flows {
            anyhow::bail!("max_flows must be at least 1");
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let f = PolicyFile::parse(
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
            ("max_flows = 0", "at least 1"),
            ("ports = [25, 465]", "implicit TLS"),
            ("ports = [", "TOML"),
        ] {
            let e = format!("{:#}", PolicyFile::parse(text).unwrap_err());
            assert!(e.contains(why) || why == "TOML", "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: multi-line error {e}");
        }
    }
}
