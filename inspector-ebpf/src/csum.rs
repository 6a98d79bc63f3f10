//! Incremental TCP checksum update (RFC 1624).

/// Folds a 32-bit ones'-complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `HC' = ~(~HC + sum(~m + m'))`, where `acc` is the sum of `~m + m'` over
/// every changed 16-bit word.
#[inline(always)]
pub fn update(check: u16, acc: u32) -> u16 {
    let sum = (!check as u32) + fold(acc) as u32;
    !fold(sum)
}
