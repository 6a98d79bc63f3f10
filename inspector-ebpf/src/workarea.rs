//! The per-CPU work area: what one program invocation needs beyond the
//! 512-byte BPF stack, in the one entry of a per-CPU array
//! (`maps::WORK_AREA`), in named parts.
//!
//! XDP and TC programs run with bottom halves disabled, so no other
//! invocation of them starts on the same CPU before one ends: the entry
//! belongs to the running invocation for its whole run. A reference to it
//! is made in exactly one place, [`borrow`]: from the map lookup
//! (`maps::work_area`) and from the context pointer that [`for_each`]
//! hands to a `bpf_loop` callback.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_sock_tuple},
    helpers::bpf_loop,
};
use inspector_common::{
    flow::{Flow, FlowKey},
    smtp::{ClientState, Seg, ServerState, Shared},
    verbs::{PolicyEntry, VerbKey},
};

use crate::{access::PayloadBytes, headers::Tcp};

/// Bytes parsed per chunk (see `inspector_common::scan::CHUNK`).
pub const BUF: usize = inspector_common::scan::CHUNK;

/// Masked spans one chunk can carry. A segment with more (hundreds of
/// disallowed commands in one packet) is dropped and counted.
pub const MAX_MASKS: usize = 32;

/// Headers longer than this (many IPv6 extension headers) are not
/// rewritten into a RST; the segment is dropped instead.
pub const HDR_MAX: usize = 256;

#[repr(C)]
pub struct WorkArea {
    /// The chunk of payload being parsed and masked, in `bytes[..BUF]`
    /// (twice as long: see `access.rs`). First, so that it is 8-aligned for
    /// word reads.
    pub payload: PayloadBytes,
    pub parser: ParserCtx,
    pub masks: MaskList,
    pub packet: PacketInfo,
    /// Headers being rewritten into a RST (see `rst.rs`); twice as long as
    /// used (see `access.rs`).
    pub hdr: [u8; 2 * HDR_MAX],
    /// A new flow entry is built here (too big for the stack).
    pub new_flow: Flow,
    /// The parameters of the kernel lookups that tell a packet's side
    /// (see `side.rs`); they would not fit beside `segment::inspect`'s frame.
    pub lookup: Lookup,
    /// The entry a reclaim pass found (see `flow::reclaim`).
    pub reclaim_key: FlowKey,
    /// When this CPU last searched the full table for an entry to reclaim;
    /// kept from one invocation to the next (this CPU's entry of the map).
    pub last_reclaim_ns: u64,
    /// This CPU's policy cache, also kept from one invocation to the next.
    pub pcache: PolicyCache,
}

/// Slots of [`PolicyCache`] (see `POLICY_CACHE_SLOTS`).
pub const POLICY_SLOTS: usize = inspector_common::policy::POLICY_CACHE_SLOTS;

/// Slots of [`SideCache`] (a power of two).
pub const SIDE_SLOTS: usize = 4;
const _: () = assert!(SIDE_SLOTS.is_power_of_two());

/// A small direct-mapped cache of policy-map entries, in the work area
/// (`WorkArea::pcache`): the parser's environment reaches it through the
/// work area's pointer, which every step has, rather than through a map
/// lookup of its own per verb or EHLO keyword. Sessions repeat a few verbs
/// (MAIL, RCPT, RCPT...), a server's EHLO replies the same keywords, and a
/// hash-map lookup costs more than all the rest of a command's parsing. It
/// is kept from one segment to the next and emptied when a policy write
/// moved the policy generation
/// (`inspector_common::policy::POLICY_GEN_MAP`). Not pinned: a restarted
/// instance starts with an empty one, whatever its layout was before.
#[repr(C)]
pub struct PolicyCache {
    pub keys: [VerbKey; POLICY_SLOTS],
    pub entries: [PolicyEntry; POLICY_SLOTS],
    /// Bit `i` set: slot `i` holds the entry of `keys[i]`.
    pub valid: u32,
    pub _pad: u32,
    /// The policy generation the valid slots were read under.
    pub gen: u64,
}

/// Route and socket lookup parameters (see `side.rs`), and this CPU's
/// cache of the route checks that passed.
#[repr(C)]
pub struct Lookup {
    pub fib: bpf_fib_lookup,
    pub tuple: bpf_sock_tuple,
    /// The segment being checked, as the cache holds it.
    pub seen: Seen,
    pub sides: SideCache,
}

/// What a server-side check is cached under: the claimed sender, the
/// interface (bit 31 set for IPv6) and the source MAC (in the low six
/// bytes). Built here rather than on the small BPF stack.
#[repr(C)]
pub struct Seen {
    pub addr: [u64; 2],
    pub iface: u32,
    pub _pad: u32,
    pub mac: u64,
}

/// A small direct-mapped cache of server-side checks that passed on a
/// forwarding host (`side::check_server`): the claimed sender's address,
/// the interface and the frame's source MAC, and until when they are
/// believed again without the route and neighbour lookups. A gateway
/// forwards to a few servers, each of which sends every packet of every
/// session from the same address through the same next hop, so one
/// lookup a second stands for thousands. Only passes are kept: a packet
/// that differs in any of the three, a forged one among them, gets the
/// full check. Kept from one invocation to the next (this CPU's entry of
/// the work-area map); not pinned.
#[repr(C)]
pub struct SideCache {
    pub seen: [Seen; SIDE_SLOTS],
    /// Believed while the coarse clock is below this; 0: empty.
    pub until_ns: [u64; SIDE_SLOTS],
}

/// The parser states and cursors of the segment being inspected.
#[repr(C)]
pub struct ParserCtx {
    pub client: ClientState,
    pub server: ServerState,
    pub seg: Seg,
    /// Snapshot of the flow's shared words (client runs read it, server runs
    /// publish into it).
    pub shared: Shared,
    /// Next segment offset to parse, and where this chunk stops.
    pub pos: u32,
    pub end: u32,
    /// Segment offset of `payload[0]`.
    pub base: u32,
    /// Segment offset of the next chunk to parse.
    pub next_chunk: u32,
    /// Set when a step returned HOLD.
    pub held: u32,
    /// Count commands and send events (0 while re-inspecting).
    pub report: u32,
    /// The `CFG_*` bits, read for a server chunk (banner masking, EHLO
    /// filtering off).
    pub config: u32,
    /// 1 if a limit a client step went past in this segment has the
    /// action `drop-connection`.
    pub limit: u32,
    /// Why the flow must be reset (an `events::reason`), 0 if it need not:
    /// a client step masked a BDAT, or bytes came with the command whose
    /// reply decides them.
    pub reset: u32,
}

/// The spans to mask in the current chunk, and what masking did so far in
/// the segment.
#[repr(C)]
pub struct MaskList {
    /// `(from, to)` segment offsets, in segment order.
    pub spans: [(u32, u32); MAX_MASKS],
    pub n: u32,
    /// More spans than `spans` holds.
    pub overflow: u32,
    /// Cursor of `mask::mask_step`: span index and next offset.
    pub idx: u32,
    pub pos: u32,
    /// Bytes changed to `X` in the segment.
    pub masked_bytes: u32,
    /// Buffer offsets `[dirty_lo, dirty_hi)` of the bytes changed in the
    /// chunk; lo > hi when clean.
    pub dirty_lo: u32,
    pub dirty_hi: u32,
    /// Ones'-complement sum of (~old + new) over masked 16-bit words.
    pub csum_acc: u32,
}

/// The segment being inspected, as the entry point found it.
#[repr(C)]
pub struct PacketInfo {
    /// The segment's headers, copied here by the entry point. Reading them
    /// back from map memory also makes every header-parsing path (VLAN
    /// tags, IPv6 extension headers) look alike to the verifier afterwards,
    /// so it checks the inspection logic once instead of once per path.
    pub tcp: Tcp,
    pub key: FlowKey,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Packet offset of the payload.
    pub payload_off: u32,
    /// Monitor mode: report what would be masked, change nothing.
    pub monitor: u32,
    /// A payload load or store failed.
    pub load_failed: u32,
    /// The tap a diverted segment goes to (see `segment::Verdict::Divert`).
    pub divert_to: u32,
    /// The segment came in through the fallback's tap.
    pub from_fallback: u32,
}

/// Makes the one reference to this CPU's work area from a pointer to it.
///
/// # Safety
/// `p` is null or points to this CPU's entry of `maps::WORK_AREA`, and the
/// caller holds no other reference to it while the result lives (a
/// `bpf_loop` callback runs while its caller waits in [`for_each`], whose
/// `&mut` it reborrows through the context pointer).
#[inline(always)]
pub unsafe fn borrow<'a>(p: *mut WorkArea) -> Option<&'a mut WorkArea> {
    // SAFETY: see the function's contract.
    unsafe { p.as_mut() }
}

/// A `bpf_loop` callback over the work area.
pub type Callback = unsafe extern "C" fn(u64, *mut c_void) -> i64;

/// Calls `cb` up to `n` times with `bpf_loop`. The callback reaches the
/// work area through the pointer passed as context ([`from_ctx`]). Handing
/// `w` over this way also tells the compiler that the call changes `*w`: a
/// `&mut` it believed nobody else could touch would otherwise let it keep
/// stale copies of the fields across the call.
#[inline(always)]
pub fn for_each(n: u32, cb: Callback, w: &mut WorkArea) {
    let mut ctx: *mut WorkArea = w;
    // SAFETY: `ctx` outlives the call; the callback only uses it through
    // `from_ctx` while this function waits.
    unsafe {
        bpf_loop(
            n,
            cb as *mut c_void,
            &mut ctx as *mut *mut WorkArea as *mut c_void,
            0,
        );
    }
}

/// The work area from the context of a [`for_each`] callback.
///
/// # Safety
/// `ctx` is the context `for_each` passed to `bpf_loop`.
#[inline(always)]
pub unsafe fn from_ctx<'a>(ctx: *mut c_void) -> Option<&'a mut WorkArea> {
    // SAFETY: `ctx` points to the pointer `for_each` made from its `&mut`.
    unsafe { borrow(*(ctx as *mut *mut WorkArea)) }
}
