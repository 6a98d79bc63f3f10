//! Global per-CPU counters.
//!
//! The kernel side keeps one `u64` per counter per CPU in a
//! `BPF_MAP_TYPE_PERCPU_ARRAY` indexed by [`Counter`]; userspace sums the CPUs.
//! Per-CPU slots need no atomics: an XDP or TC program runs to completion on
//! one CPU with migration disabled, and no other program writes that CPU's slot.

/// Name of the pinned per-CPU counter map.
pub const COUNTERS_MAP: &str = "INSPECTOR_COUNTERS";

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Index of one counter in the counter map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Every counter, in map-index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The stable name used by `inspector stats` and its JSON output.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// One-line explanation shown by `inspector stats --help`.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($doc),*),)*
                }
            }
        }
    };
}

counters! {
    /// Packets the program saw, whatever they were.
    PacketsSeen => "packets_seen",
    /// TCP packets of inspected flows (a port of the inspected set on either side).
    PacketsInspected => "packets_inspected",
    /// TCP payload bytes of inspected flows.
    BytesInspected => "bytes_inspected",
    /// Frames whose headers were truncated or inconsistent (passed untouched).
    Malformed => "malformed",
    /// IP fragments seen (their transport header cannot be checked per packet).
    Fragments => "fragments",
}

/// Number of counters (size of the counter map).
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
            assert!(!c.help().is_empty());
        }
    }
}
