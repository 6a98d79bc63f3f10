//! Checksum arithmetic: the incremental update of RFC 1624 and the
//! pseudo-header sum, which also recognises a checksum field that only holds
//! it (CHECKSUM_PARTIAL).

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

/// What the change of byte `old` to `new` at payload offset `pos` adds to an
/// [`update`] accumulator. The payload starts at an even offset from the
/// TCP header, so an even payload offset is the high byte of a word.
#[inline(always)]
pub fn byte_change(pos: u32, old: u8, new: u8) -> u32 {
    let shift = if pos & 1 == 0 { 8 } else { 0 };
    (!((old as u32) << shift) & 0xffff) + ((new as u32) << shift)
}

/// The folded pseudo-header sum of a TCP segment of `tcp_len` bytes. The
/// sum does not depend on the order of the addresses.
///
/// It is also the value a CHECKSUM_PARTIAL packet carries in its checksum
/// field (folded, not inverted), as `tcp_v4_send_check` and
/// `tcp_v6_send_check` leave it for the device to complete. A complete
/// checksum equals it by chance once in 65536 packets; such a masked packet
/// keeps a stale checksum, the receiver drops it, and the sender's
/// retransmission (with new timestamps) goes through.
#[inline(always)]
pub fn pseudo(src: &[u8; 16], dst: &[u8; 16], is_v6: bool, tcp_len: usize) -> u16 {
    let mut sum: u32 = 0;
    let start = if is_v6 { 0 } else { 12 };
    let mut i = start;
    while i < 16 {
        sum += u16::from_be_bytes([src[i], src[i + 1]]) as u32;
        sum += u16::from_be_bytes([dst[i], dst[i + 1]]) as u32;
        i += 2;
    }
    sum += 6; // IPPROTO_TCP
    sum += tcp_len as u32;
    fold(sum)
}
