//! `inspector policy`: the verb policy of a running instance, live.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use inspector_common::{
    config::{limit_action, Config, CFG_MASK_BANNER, CFG_NO_EHLO_FILTER, CONFIG_MAP},
    policy::{POLICY_GEN_MAP, POLICY_MAP},
    verbs::{key_text, PolicyEntry, VerbKey, ALLOWED, MAX_VERB},
};
use inspector_userspace::{
    loader, permanent, privilege,
    settings::{check_limit, set_limit_action, with_changes, Limit, LimitAction, LIMITS},
};

use crate::{
    cli::{LimitRule, OnOff, Permanent, PolicyAction, PolicyArgs, Switch},
    out,
};

fn verb_string(k: VerbKey) -> String {
    let mut t = [0u8; MAX_VERB];
    let n = key_text(k, &mut t);
    String::from_utf8_lossy(&t[..n]).into_owned()
}

fn open(pin_dir: &Path) -> Result<HashMap<MapData, VerbKey, PolicyEntry>> {
    let data = inspector_userspace::pin::open_map(pin_dir, POLICY_MAP, "policy")?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

/// The allowed verbs in a policy map.
fn allowed(map: &HashMap<MapData, VerbKey, PolicyEntry>) -> Vec<VerbKey> {
    map.iter()
        .filter_map(|r| r.ok())
        .filter(|(_, e)| e.flags & ALLOWED != 0)
        .map(|(k, _)| k)
        .collect()
}

/// Names of the allowed verbs of the pinned policy, sorted.
pub fn allowed_names(pin_dir: &Path) -> Result<Vec<String>> {
    let map = open(pin_dir)?;
    let mut names: Vec<String> = allowed(&map).iter().map(|k| verb_string(*k)).collect();
    names.sort();
    Ok(names)
}

/// The pinned configuration map (one `Config` word).
fn open_config(pin_dir: &Path) -> Result<Array<MapData, Config>> {
    let data = inspector_userspace::pin::open_map(pin_dir, CONFIG_MAP, "configuration")?;
    Ok(Array::try_from(Map::Array(data))?)
}

/// `(ehlo_filter, mask_banner)` of a configuration word.
fn switches(c: &Config) -> (bool, bool) {
    (
        c.flags & CFG_NO_EHLO_FILTER == 0,
        c.flags & CFG_MASK_BANNER != 0,
    )
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Sets one switch in the pinned configuration word, the other bits as
/// they are; the programs read it at their next server segment. With
/// --permanent, the policy file first.
fn set(pin_dir: &Path, switch: Switch, value: OnOff, permanent: &Permanent) -> Result<()> {
    let mut cfg = open_config(pin_dir)?;
    let mut c = cfg.get(&0, 0).context("reading the configuration")?;
    let (bit, on_means_set, key) = match switch {
        Switch::EhloFilter => (CFG_NO_EHLO_FILTER, false, "ehlo_filter"),
        Switch::MaskBanner => (CFG_MASK_BANNER, true, "mask_banner"),
    };
    if permanent.permanent {
        permanent::write_key(&permanent.policy, key, value == OnOff::On)?;
    }
    if (value == OnOff::On) == on_means_set {
        c.flags |= bit;
    } else {
        c.flags &= !bit;
    }
    cfg.set(0, c, 0).context("updating the configuration")?;
    let (ehlo, banner) = switches(&c);
    out::line(format_args!("ehlo_filter: {}", on_off(ehlo)))?;
    out::line(format_args!("mask_banner: {}", on_off(banner)))?;
    said_where(permanent)
}

/// The rule of `inspector policy limit RULE`.
fn limit_of(rule: LimitRule) -> &'static Limit {
    &LIMITS[match rule {
        LimitRule::CommandLine => 0,
        LimitRule::Rcpts => 1,
        LimitRule::AddressLength => 2,
        LimitRule::AddressChars => 3,
        LimitRule::HeaderLine => 4,
    }]
}

/// Sets the action of a limit in the pinned configuration word (with
/// --permanent, in the policy file first); the programs read it at their
/// next segment.
fn set_limit(
    pin_dir: &Path,
    rule: LimitRule,
    act: LimitAction,
    permanent: &Permanent,
) -> Result<()> {
    let l = limit_of(rule);
    let mut cfg = open_config(pin_dir)?;
    let mut c = cfg.get(&0, 0).context("reading the configuration")?;
    if permanent.permanent {
        permanent::write_key(&permanent.policy, l.key, act.name())?;
    }
    set_limit_action(&mut c.flags, l.rule, act);
    cfg.set(0, c, 0).context("updating the configuration")?;
    out::line(limits_line(&c))?;
    said_where(permanent)
}

/// Says whether a change is also in the policy file.
fn said_where(permanent: &Permanent) -> Result<()> {
    if permanent.permanent {
        out::line(format_args!(
            "changed now and in {} (permanent: the next start of `attach --policy {}` keeps it)",
            permanent.policy.display(),
            permanent.policy.display()
        ))?;
    } else {
        out::line(
            "changed now only (runtime): the next start of `attach` applies its policy file and \
             options again; add --permanent to also write the change into the policy file",
        )?;
    }
    Ok(())
}

/// The action of limit `rule` in a configuration word.
fn action_of(c: &Config, rule: u8) -> &'static str {
    LimitAction::of_code(limit_action(c.flags, rule)).name()
}

fn limits_line(c: &Config) -> String {
    let rules: Vec<String> = LIMITS
        .iter()
        .map(|l| format!("{}={}", l.name.replace('-', "_"), action_of(c, l.rule)))
        .collect();
    format!("limits: {}", rules.join(" "))
}

pub fn run(args: PolicyArgs) -> Result<()> {
    let PolicyArgs { action, pin_dir } = args;
    // Bad verbs and actions are refused (exit 2) before anything else is
    // looked at.
    if let PolicyAction::Allow { verbs, .. } | PolicyAction::Deny { verbs, .. } = &action {
        with_changes(&[], verbs, &[])?;
    }
    if let PolicyAction::Limit { rule, action, .. } = &action {
        let l = limit_of(*rule);
        check_limit(
            l.rule,
            *action,
            &format!("inspector policy limit {}", l.name),
        )?;
    }
    privilege::require_bpf("policy")?;
    let mut map = open(&pin_dir)?;
    let current = allowed(&map);
    let (allow, deny, permanent) = match action {
        PolicyAction::Show { json } => {
            let mut names: Vec<String> = current.iter().map(|k| verb_string(*k)).collect();
            names.sort();
            let c = open_config(&pin_dir)?
                .get(&0, 0)
                .context("reading the configuration")?;
            let (ehlo, banner) = switches(&c);
            if json {
                out::line(serde_json::json!({
                    "allowed": names,
                    "ehlo_filter": ehlo,
                    "mask_banner": banner,
                    "limits": LIMITS
                        .iter()
                        .map(|l| (l.name.replace('-', "_"), action_of(&c, l.rule).into()))
                        .collect::<serde_json::Map<String, serde_json::Value>>(),
                }))?;
            } else {
                out::print(&format!(
                    "allowed: {}\nmasked:  every other verb\nehlo_filter: {}\nmask_banner: {}\n{}\n",
                    names.join(" "),
                    on_off(ehlo),
                    on_off(banner),
                    limits_line(&c)
                ))?;
            }
            return Ok(());
        }
        PolicyAction::Limit {
            rule,
            action,
            permanent,
        } => return set_limit(&pin_dir, rule, action, &permanent),
        PolicyAction::Set {
            switch,
            value,
            permanent,
        } => return set(&pin_dir, switch, value, &permanent),
        PolicyAction::Allow { verbs, permanent } => (verbs, vec![], permanent),
        PolicyAction::Deny { verbs, permanent } => (vec![], verbs, permanent),
    };
    let next = with_changes(&current, &allow, &deny)?;
    // Opened before anything is written. An instance that an older
    // `inspector` attached has none: its kernel program keeps no policy
    // cache from one segment to the next, so there is nothing to tell.
    let mut gen = match pin_dir.join(POLICY_GEN_MAP).exists() {
        true => {
            let data =
                inspector_userspace::pin::open_map(&pin_dir, POLICY_GEN_MAP, "policy generation")?;
            Some(Array::<MapData, u64>::try_from(Map::Array(data))?)
        }
        false => None,
    };
    // The file first: if it cannot be written, nothing changes at all.
    if permanent.permanent {
        permanent::write_through(&permanent.policy, &allow, &deny)?;
    }
    loader::write_policy(&mut map, &next)?;
    if let Some(gen) = gen.as_mut() {
        loader::policy_written(gen)?;
    }
    let mut names: Vec<String> = next.iter().map(|k| verb_string(*k)).collect();
    names.sort();
    out::line(format_args!("allowed: {}", names.join(" ")))?;
    said_where(&permanent)
}
