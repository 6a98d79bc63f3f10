//! `inspector policy`: the verb policy of a running instance, live.

use std::path::Path;

use anyhow::Result;
use aya::maps::{HashMap, Map, MapData};
use inspector_common::{
    policy::POLICY_MAP,
    verbs::{key_text, PolicyEntry, VerbKey, ALLOWED, MAX_VERB},
};
use inspector_userspace::{loader, permanent, privilege, settings::with_changes};

use crate::{
    cli::{PolicyAction, PolicyArgs},
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

pub fn run(args: PolicyArgs) -> Result<()> {
    let PolicyArgs { action, pin_dir } = args;
    // Bad verbs are refused (exit 2) before anything else is looked at.
    if let PolicyAction::Allow { verbs, .. } | PolicyAction::Deny { verbs, .. } = &action {
        with_changes(&[], verbs, &[])?;
    }
    privilege::require_bpf("policy")?;
    let mut map = open(&pin_dir)?;
    let current = allowed(&map);
    let (allow, deny, permanent) = match action {
        PolicyAction::Show { json } => {
            let mut names: Vec<String> = current.iter().map(|k| verb_string(*k)).collect();
            names.sort();
            if json {
                out::line(serde_json::json!({ "allowed": names }))?;
            } else {
                out::print(&format!(
                    "allowed: {}\nmasked:  every other verb\n",
                    names.join(" ")
                ))?;
            }
            return Ok(());
        }
        PolicyAction::Allow { verbs, permanent } => (verbs, vec![], permanent),
        PolicyAction::Deny { verbs, permanent } => (vec![], verbs, permanent),
    };
    let next = with_changes(&current, &allow, &deny)?;
    // The file first: if it cannot be written, nothing changes at all.
    if permanent.permanent {
        permanent::write_through(&permanent.policy, &allow, &deny)?;
    }
    loader::write_policy(&mut map, &next)?;
    let mut names: Vec<String> = next.iter().map(|k| verb_string(*k)).collect();
    names.sort();
    out::line(format_args!("allowed: {}", names.join(" ")))?;
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
