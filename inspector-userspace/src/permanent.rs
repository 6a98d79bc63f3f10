//! `inspector policy allow|deny|set|limit --permanent`: the change written
//! through to the policy file, with `toml_edit` so that the operator's
//! comments, layout and other keys stay as they were.
//!
//! The rules keep the file meaningful: with an `allowed` list, the verb is
//! added to or removed from that list; otherwise allowing a verb removes
//! it from `deny` and adds it to `allow` unless the default list has it,
//! and denying does the reverse. The result is checked by the same rules as
//! any policy file before it replaces the file (atomically, by rename).

use std::path::Path;

use anyhow::{Context, Result};
use inspector_common::verbs::VerbKey;
use toml_edit::{Array, DocumentMut, Item, Value};

use crate::{
    loader::{parse_verb, verb_text},
    settings::{default_policy, Given},
};

/// Writes `allow` and `deny` (already checked verbs) into the policy file
/// at `path`, creating it if it does not exist.
pub fn write_through(path: &Path, allow: &[String], deny: &[String]) -> Result<()> {
    rewrite(path, |text| edit(text, allow, deny))
}

/// Sets `key = value` (a switch or a limit: `ehlo_filter = false`,
/// `rcpt_limit = "mask"`) in the policy file at `path`, creating it if it
/// does not exist.
pub fn write_key(path: &Path, key: &str, value: impl Into<Value>) -> Result<()> {
    let value = value.into();
    rewrite(path, |text| edit_key(text, key, value.clone()))
}

/// The text of the policy file with `key` set to `value`.
pub fn edit_key(text: &str, key: &str, value: Value) -> Result<String> {
    Given::parse(text)?;
    let mut doc: DocumentMut = text.parse().context("parsing TOML")?;
    match doc.get_mut(key).and_then(Item::as_value_mut) {
        // The value replaced, its comment kept.
        Some(v) => {
            let decor = v.decor().clone();
            *v = value;
            *v.decor_mut() = decor;
        }
        None => {
            doc.insert(key, Item::Value(value));
        }
    }
    let new = doc.to_string();
    Given::parse(&new).context("the edited policy file would not be valid")?;
    Ok(new)
}

/// Replaces the policy file at `path` by what `change` makes of its text
/// (empty if it does not exist), atomically.
fn rewrite(path: &Path, change: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading policy file {}", path.display())),
    };
    let new = change(&text).with_context(|| format!("policy file {}", path.display()))?;
    let tmp = path.with_extension("toml.inspector-new");
    std::fs::write(&tmp, &new).with_context(|| format!("writing {}", tmp.display()))?;
    // The new file keeps the old one's mode (a policy file may be 0640).
    if let Ok(m) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, m.permissions())
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn keys(list: &[String]) -> Result<Vec<VerbKey>> {
    list.iter().map(|v| parse_verb(v)).collect()
}

/// The verb keys of a TOML array of strings (anything else is skipped:
/// the file was checked before).
fn array_has(a: &Array, k: VerbKey) -> bool {
    a.iter()
        .any(|v| v.as_str().and_then(|s| parse_verb(s).ok()) == Some(k))
}

fn remove(a: &mut Array, k: VerbKey) {
    a.retain(|v| v.as_str().and_then(|s| parse_verb(s).ok()) != Some(k));
}

fn add(a: &mut Array, k: VerbKey) {
    if !array_has(a, k) {
        a.push(verb_text(k));
    }
}

fn array<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut Array> {
    if !doc.contains_key(key) {
        doc.insert(key, Item::Value(Value::Array(Array::new())));
    }
    doc[key]
        .as_array_mut()
        .with_context(|| format!("`{key}` is not a list"))
}

/// The text of the policy file with the change made.
pub fn edit(text: &str, allow: &[String], deny: &[String]) -> Result<String> {
    // Only a valid file is edited: an error in it is the operator's to fix.
    let given = Given::parse(text)?;
    let mut doc: DocumentMut = text.parse().context("parsing TOML")?;
    let defaults = default_policy();
    let (allow, deny) = (keys(allow)?, keys(deny)?);
    if given.allowed.is_some() {
        let list = array(&mut doc, "allowed")?;
        for k in &allow {
            add(list, *k);
        }
        for k in &deny {
            remove(list, *k);
        }
    } else {
        for k in &allow {
            remove(array(&mut doc, "deny")?, *k);
            if !defaults.contains(k) {
                add(array(&mut doc, "allow")?, *k);
            }
        }
        for k in &deny {
            remove(array(&mut doc, "allow")?, *k);
            if defaults.contains(k) {
                add(array(&mut doc, "deny")?, *k);
            }
        }
    }
    let new = doc.to_string();
    Given::parse(&new).context("the edited policy file would not be valid")?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn allowed_by(text: &str) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("inspector-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&f, text).unwrap();
        let s = Settings::resolve(&Given::default(), Some(&f)).unwrap();
        std::fs::remove_file(&f).unwrap();
        s.allowed.iter().map(|k| verb_text(*k)).collect()
    }

    #[test]
    fn allow_and_deny_round_trip_and_keep_comments() {
        let text = "# my policy\nports = [25] # only 25\ndeny = [\"VRFY\"]\n";
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let t = edit(text, &s(&["xfoo", "vrfy"]), &[]).unwrap();
        assert!(t.contains("# my policy") && t.contains("# only 25"), "{t}");
        let a = allowed_by(&t);
        assert!(
            a.contains(&"XFOO".into()) && a.contains(&"VRFY".into()),
            "{t}"
        );
        let t = edit(&t, &[], &s(&["XFOO", "EHLO"])).unwrap();
        let a = allowed_by(&t);
        assert!(
            !a.contains(&"XFOO".into()) && !a.contains(&"EHLO".into()),
            "{t}"
        );
        assert!(a.contains(&"VRFY".into()), "{t}");
        // A file with the complete list: that list is edited.
        let t = edit(
            "allowed = [\"EHLO\", \"MAIL\"]\n",
            &s(&["RCPT"]),
            &s(&["MAIL"]),
        )
        .unwrap();
        assert_eq!(allowed_by(&t), ["EHLO", "RCPT"], "{t}");
        // An empty file gets the keys.
        let t = edit("", &s(&["STARTTLS"]), &[]).unwrap();
        assert!(allowed_by(&t).contains(&"STARTTLS".into()), "{t}");
        // An invalid file is not touched.
        assert!(edit("colour = 1\n", &s(&["X"]), &[]).is_err());
    }

    #[test]
    fn a_switch_or_a_limit_is_set_with_its_comment_kept() {
        let text = "# mine\nrcpt_limit = \"log\" # for now\nports = [25]\n";
        let t = edit_key(text, "rcpt_limit", "mask".into()).unwrap();
        assert!(t.contains("rcpt_limit = \"mask\" # for now"), "{t}");
        assert!(t.contains("# mine") && t.contains("ports = [25]"), "{t}");
        let t = edit_key(&t, "ehlo_filter", false.into()).unwrap();
        let g = Given::parse(&t).unwrap();
        assert_eq!(g.ehlo_filter, Some(false));
        assert_eq!(
            g.rcpt_limit,
            Some(crate::settings::LimitAction::Mask),
            "{t}"
        );
        // What the rules refuse is not written.
        let e = edit_key(&t, "header_line_limit", "mask".into()).unwrap_err();
        assert!(format!("{e:#}").contains("`mask` does not apply"), "{e:#}");
    }
}
