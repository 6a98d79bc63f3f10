//! Map definitions and small helpers around them.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use inspector_common::{
    counters::{Counter, COUNTER_COUNT},
    ports::{port_slot, PORT_WORDS},
};

/// Global counters, one `u64` per CPU per [`Counter`]. `inspector attach` pins
/// every map under its pin dir, where `inspector stats` finds them.
#[map(name = "INSPECTOR_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Bitmap of inspected server ports (see `inspector_common::ports`).
#[map(name = "INSPECTOR_PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

#[inline(always)]
pub fn count_n(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // This CPU's own slot: no other writer, no atomic needed.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    count_n(c, 1)
}

#[inline(always)]
pub fn port_inspected(port: u16) -> bool {
    let (word, bit) = port_slot(port);
    match PORTS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}
