//! SMTP verbs: how they are keyed in the policy map, the table of well-known
//! verbs that get their own counters, and the default (PIX/ASA) policy.

/// Longest verb that can be allowed. Longer verbs are always masked; every
/// real SMTP verb (STARTTLS is the longest) fits.
pub const MAX_VERB: usize = 8;

/// A verb (or verb prefix) as a policy-map key: its upper-cased bytes packed
/// little-endian into a `u64`, zero-padded. Only verb characters
/// ([`is_verb_char`]) ever enter a key, so the padding cannot be confused
/// with a NUL byte of the verb.
pub type VerbKey = u64;

/// Characters a policy verb may contain: ASCII letters, digits, `-` and `_`.
/// A command verb containing anything else can never be allowed.
#[inline(always)]
pub const fn is_verb_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Appends byte `b` (already known to be a verb char) at position `len`.
#[inline(always)]
pub const fn key_push(key: VerbKey, len: usize, b: u8) -> VerbKey {
    if len >= MAX_VERB {
        return key;
    }
    key | ((b.to_ascii_uppercase() as u64) << (8 * len))
}

/// The key of a whole verb given as text (any case). `None` if it is empty,
/// too long or has a character that no verb may have.
pub const fn key_of(verb: &[u8]) -> Option<VerbKey> {
    if verb.is_empty() || verb.len() > MAX_VERB {
        return None;
    }
    let mut key = 0;
    let mut i = 0;
    while i < verb.len() {
        if !is_verb_char(verb[i]) {
            return None;
        }
        key = key_push(key, i, verb[i]);
        i += 1;
    }
    Some(key)
}

/// The key of the first `len` bytes of the verb `key`.
#[inline(always)]
pub const fn key_prefix(key: VerbKey, len: usize) -> VerbKey {
    if len >= MAX_VERB {
        key
    } else {
        key & ((1u64 << (8 * len)) - 1)
    }
}

/// Writes the verb's text into `out`, returns its length.
pub fn key_text(key: VerbKey, out: &mut [u8; MAX_VERB]) -> usize {
    let mut n = 0;
    while n < MAX_VERB {
        let b = (key >> (8 * n)) as u8;
        if b == 0 {
            break;
        }
        out[n] = b;
        n += 1;
    }
    n
}

/// Value of a policy-map entry (see [`crate::policy`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    /// [`ALLOWED`] and/or [`PREFIX`].
    pub flags: u8,
    /// Index into [`WELL_KNOWN`] (for counters), or [`OTHER`].
    pub verb_id: u8,
    pub _pad: [u8; 2],
}

/// The key is a complete allowed verb.
pub const ALLOWED: u8 = 1;
/// The key is a proper prefix of an allowed verb: what has been seen may
/// still become allowed.
pub const PREFIX: u8 = 2;

macro_rules! well_known {
    ($($id:ident = $text:literal,)*) => {
        /// Verbs with their own counters (and special handling where the
        /// stream state depends on them). Everything else counts as [`OTHER`].
        pub const WELL_KNOWN: &[&str] = &[$($text,)*];

        #[allow(non_snake_case)]
        pub mod id {
            //! Indices into [`super::WELL_KNOWN`].
            well_known!(@ids 0u8; $($id)*);
        }
    };
    (@ids $n:expr; $id:ident $($rest:ident)*) => {
        pub const $id: u8 = $n;
        well_known!(@ids $n + 1u8; $($rest)*);
    };
    (@ids $n:expr;) => {};
}

well_known! {
    DATA = "DATA",
    HELO = "HELO",
    MAIL = "MAIL",
    NOOP = "NOOP",
    QUIT = "QUIT",
    RCPT = "RCPT",
    RSET = "RSET",
    AUTH = "AUTH",
    EHLO = "EHLO",
    ETRN = "ETRN",
    HELP = "HELP",
    SAML = "SAML",
    SEND = "SEND",
    SOML = "SOML",
    VRFY = "VRFY",
    STARTTLS = "STARTTLS",
    BDAT = "BDAT",
    ATRN = "ATRN",
    ONEX = "ONEX",
    VERB = "VERB",
    XEXCH50 = "XEXCH50",
    EXPN = "EXPN",
    TURN = "TURN",
    XCLIENT = "XCLIENT",
    XFORWARD = "XFORWARD",
}

/// Counter slot for every verb outside [`WELL_KNOWN`] (and for empty lines).
pub const OTHER: u8 = WELL_KNOWN.len() as u8;
/// Number of per-verb counter slots.
pub const VERB_SLOTS: u32 = OTHER as u32 + 1;

/// The fifteen verbs the PIX/ASA "inspect esmtp" lets through: RFC 821's
/// seven and eight extended commands. Everything else is masked.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "DATA", "HELO", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "AUTH", "EHLO", "ETRN", "HELP", "SAML",
    "SEND", "SOML", "VRFY",
];

/// Counter slot of a verb key.
pub fn verb_id(key: VerbKey) -> u8 {
    let mut i = 0;
    while i < WELL_KNOWN.len() {
        if key_of(WELL_KNOWN[i].as_bytes()) == Some(key) {
            return i as u8;
        }
        i += 1;
    }
    OTHER
}

/// Name of a counter slot.
pub fn verb_name(id: u8) -> &'static str {
    WELL_KNOWN.get(id as usize).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key_of(b"noop"), key_of(b"NOOP"));
        assert_eq!(key_of(b""), None);
        assert_eq!(key_of(b"STARTTLS").map(|k| key_prefix(k, 2)), key_of(b"ST"));
        assert_eq!(key_of(b"TOOLONGXX"), None);
        assert_eq!(key_of(b"NO\0P"), None);
        let mut t = [0; MAX_VERB];
        let n = key_text(key_of(b"xexch50").unwrap(), &mut t);
        assert_eq!(&t[..n], b"XEXCH50");
    }

    #[test]
    fn ids() {
        assert_eq!(verb_id(key_of(b"data").unwrap()), id::DATA);
        assert_eq!(verb_id(key_of(b"XFORWARD").unwrap()), id::XFORWARD);
        assert_eq!(verb_id(key_of(b"FOO").unwrap()), OTHER);
        assert_eq!(verb_name(id::STARTTLS), "STARTTLS");
        assert_eq!(verb_name(OTHER), "other");
        for v in DEFAULT_ALLOWED {
            assert!(verb_id(key_of(v.as_bytes()).unwrap()) < OTHER);
        }
    }
}
