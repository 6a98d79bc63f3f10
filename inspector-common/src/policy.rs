//! The verb policy as the kernel sees it: a hash map from [`VerbKey`] to
//! [`PolicyEntry`], holding every allowed verb (flag `ALLOWED`), every proper
//! prefix of one (flag `PREFIX`), and every well-known verb (for its counter
//! slot, flags possibly 0). A key that is absent is neither allowed nor a
//! prefix: the verb is masked as soon as that much of it has been seen.
//!
//! The prefix entries are what lets the kernel mask the bytes of a verb split
//! across segments without waiting for its end: `ST` is not a prefix of any
//! allowed verb, so the `ST` of a split `ST`|`ARTTLS` is masked at once.

use crate::verbs::{
    key_prefix, verb_id, PolicyEntry, VerbKey, ALLOWED, MAX_VERB, OTHER, PREFIX, WELL_KNOWN,
};

/// Name of the pinned policy map.
pub const POLICY_MAP: &str = "INSPECTOR_POLICY";
/// Capacity of the policy map: every allowed verb brings up to 8 keys.
pub const POLICY_ENTRIES: u32 = 1024;
/// Name of the pinned policy generation: one `u64` that every writer of the
/// policy map adds one to after its writes. The kernel keeps a per-CPU
/// cache of policy entries from one segment to the next, and empties it
/// when the generation it was filled under is no longer the map's, so a
/// policy change still applies from the next segment on. (Adding after the
/// writes is what makes that hold: a segment that reads the new number
/// started after the new entries were in the map.)
pub const POLICY_GEN_MAP: &str = "INSPECTOR_POLICY_GEN";

/// Entries of the kernel's per-CPU policy cache (`WorkArea::pcache` in the
/// eBPF crate): a session's verbs and the keywords of a server's EHLO
/// reply (Postfix sends nine), some pairs sharing a slot (then they push
/// each other out, and one of them costs a map lookup).
pub const POLICY_CACHE_SLOTS: usize = 16;
// The cache's `valid` word has a bit per slot (`crate::cache_slot`).
const _: () = assert!(POLICY_CACHE_SLOTS.is_power_of_two() && POLICY_CACHE_SLOTS <= 32);

/// Number of bytes in a key (position of its last non-zero byte + 1).
pub const fn key_len(key: VerbKey) -> usize {
    let mut n = 0;
    while n < MAX_VERB && (key >> (8 * n)) & 0xff != 0 {
        n += 1;
    }
    n
}

/// The entry the map must hold for `key`, given the allowed verbs; `None`
/// when the key must be absent.
pub fn entry_for(allowed: &[VerbKey], key: VerbKey) -> Option<PolicyEntry> {
    let len = key_len(key);
    let mut flags = 0;
    for &a in allowed {
        if a == key {
            flags |= ALLOWED;
        } else if key_len(a) > len && key_prefix(a, len) == key {
            flags |= PREFIX;
        }
    }
    let verb_id = verb_id(key);
    if flags == 0 && verb_id == OTHER {
        return None;
    }
    Some(PolicyEntry {
        flags,
        verb_id,
        _pad: [0; 2],
    })
}

/// Calls `f` with every key the map must hold (possibly more than once).
pub fn for_each_key(allowed: &[VerbKey], mut f: impl FnMut(VerbKey)) {
    for w in WELL_KNOWN {
        if let Some(k) = crate::verbs::key_of(w.as_bytes()) {
            f(k);
        }
    }
    for &a in allowed {
        for len in 1..=key_len(a) {
            f(key_prefix(a, len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verbs::{id, key_of, DEFAULT_ALLOWED};

    fn k(s: &str) -> VerbKey {
        key_of(s.as_bytes()).unwrap()
    }

    #[test]
    fn default_policy_entries() {
        let allowed: [VerbKey; 15] = core::array::from_fn(|i| k(DEFAULT_ALLOWED[i]));
        let e = entry_for(&allowed, k("DATA")).unwrap();
        assert_eq!((e.flags, e.verb_id), (ALLOWED, id::DATA));
        assert_eq!(entry_for(&allowed, k("S")).unwrap().flags, PREFIX);
        assert_eq!(entry_for(&allowed, k("SE")).unwrap().flags, PREFIX);
        assert_eq!(entry_for(&allowed, k("ST")), None);
        let e = entry_for(&allowed, k("STARTTLS")).unwrap();
        assert_eq!((e.flags, e.verb_id), (0, id::STARTTLS));
        assert_eq!(entry_for(&allowed, k("X-FOO")), None);
    }

    #[test]
    fn prefix_and_allowed_together() {
        let allowed = [k("SEND"), k("SENDX")];
        assert_eq!(
            entry_for(&allowed, k("SEND")).unwrap().flags,
            ALLOWED | PREFIX
        );
    }
}
