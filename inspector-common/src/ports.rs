//! The set of inspected server ports, as a bitmap in an array map.
//!
//! A 65536-bit bitmap in a `BPF_MAP_TYPE_ARRAY` of 1024 `u64` words: the
//! kernel inlines array lookups, so testing both ports of every TCP packet
//! costs two loads and no hashing. That keeps non-SMTP traffic cheap.

/// Name of the pinned port bitmap map.
pub const PORTS_MAP: &str = "INSPECTOR_PORTS";

/// Number of `u64` words in the bitmap.
pub const PORT_WORDS: u32 = 65536 / 64;

/// Ports inspected when the operator names none (SMTP and submission).
pub const DEFAULT_PORTS: &[u16] = &[25, 587];

/// Port 465 carries implicit TLS: there is nothing to inspect, ever.
pub const NEVER_INSPECTED: u16 = 465;

/// Word index and bit mask of `port` in the bitmap.
#[inline(always)]
pub const fn port_slot(port: u16) -> (u32, u64) {
    ((port as u32) >> 6, 1u64 << (port & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_every_port_once() {
        let mut seen = [0u64; PORT_WORDS as usize];
        for p in 0..=u16::MAX {
            let (w, b) = port_slot(p);
            assert!(w < PORT_WORDS);
            assert_eq!(seen[w as usize] & b, 0);
            seen[w as usize] |= b;
        }
        assert!(seen.iter().all(|w| *w == u64::MAX));
    }
}
