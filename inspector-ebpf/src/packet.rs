//! What the inspection logic needs from a packet, for XDP frames and for
//! socket buffers (TC). The two differ in their helpers and, above all, in
//! checksums: an skb knows whether its checksum is complete or left to the
//! device (CHECKSUM_PARTIAL), an XDP frame does not.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{
        bpf_check_mtu, bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};

use crate::{access::ptr_at, csum};

pub trait Packet {
    /// Start and end of the directly readable (linear) part.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole packet, linear part and fragments.
    fn total_len(&self) -> usize;
    /// Cuts the packet to `len` bytes (every packet pointer is invalid
    /// afterwards).
    fn trim_to(&self, len: u32) -> bool;
    /// Copies `len` bytes at `off` into `dst`, which must have room for them.
    fn load(&self, off: u32, dst: *mut u8, len: u32) -> bool;
    /// Writes `len` bytes from `src` at `off`.
    fn store(&self, off: u32, src: *mut u8, len: u32) -> bool;
    /// Applies `acc`, the ones'-complement sum of (~old + new) over every
    /// changed payload word, to the checksum of the TCP header at `l4_off`,
    /// whose pseudo-header sum is `pseudo`. False if the checksum was left
    /// to the sender's offload instead (an XDP frame whose field only holds
    /// the pseudo-header sum).
    fn fix_checksum(&self, l4_off: usize, pseudo: u16, acc: u32) -> bool;
    /// The raw context pointer, and the context back from it (to reach the
    /// packet from a `bpf_loop` callback).
    fn raw(&self) -> *mut core::ffi::c_void;
    /// # Safety
    /// `p` must come from [`Packet::raw`] of the same program invocation.
    unsafe fn from_raw(p: *mut core::ffi::c_void) -> Self;
    /// The interface the packet came in on; 0 if this host made it (TC
    /// egress of a local packet), the one case with no outside sender.
    fn ingress_ifindex(&self) -> u32;
    /// The verdict that sends the (rewritten) packet back to its sender:
    /// out of the interface it came in on, or, for a packet this host made
    /// (TC egress), back in to this host.
    fn bounce(&self) -> u32;
    /// The verdict that sends the packet out of interface `ifindex` (the
    /// reassembly fallback's tap) instead.
    fn redirect(&self, ifindex: u32) -> u32;
    /// Whether [`Packet::redirect`] can carry the whole packet to the tap.
    fn redirectable(&self) -> bool;
    /// Buffer-sized chunks a segment can span: a single-buffer XDP frame
    /// always fits in one, a TC skb can be a 64 KiB GSO/GRO packet.
    const MAX_CHUNKS: u32;
    /// The program's return codes.
    const PASS: u32;
    const DROP: u32;

    /// Reads a `T` (a plain-old-data header) at `off` of the linear part.
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let p = ptr_at::<T>(self.data(), self.data_end(), off)?;
        // SAFETY: `ptr_at` checked that the whole `T` lies inside the
        // linear part of the frame; headers are read unaligned.
        Some(unsafe { p.read_unaligned() })
    }

    /// A byte array `T` at `off` of the linear part, in place: its bytes
    /// are loaded where they are used instead of copied onto the stack
    /// first (header parsing runs in the frame beneath every later call).
    #[inline(always)]
    fn at<T>(&self, off: usize) -> Option<&T> {
        let p = ptr_at::<T>(self.data(), self.data_end(), off)?;
        // SAFETY: as in `read`; `T` is a byte array (alignment 1), and the
        // frame outlives the borrow of the context.
        Some(unsafe { &*p })
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn raw(&self) -> *mut core::ffi::c_void {
        self.ctx as *mut _
    }
    #[inline(always)]
    unsafe fn from_raw(p: *mut core::ffi::c_void) -> Self {
        XdpContext::new(p as *mut _)
    }
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn total_len(&self) -> usize {
        // The linear part and every fragment of a multi-buffer frame.
        // SAFETY: `self.ctx` is this invocation's xdp_md.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as usize }
    }
    #[inline(always)]
    fn trim_to(&self, len: u32) -> bool {
        let delta = len as i64 - self.total_len() as i64;
        // SAFETY: as in `total_len`; the caller holds no packet pointer.
        delta <= 0 && unsafe { bpf_xdp_adjust_tail(self.ctx, delta as i32) } == 0
    }
    #[inline(always)]
    fn load(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the caller gives `dst` room for `len` bytes; the helper
        // checks `off` and `len` against the frame.
        unsafe { bpf_xdp_load_bytes(self.ctx, off, dst as *mut _, len) == 0 }
    }
    #[inline(always)]
    fn store(&self, off: u32, src: *mut u8, len: u32) -> bool {
        // SAFETY: as in `load`, with `src` holding `len` bytes.
        unsafe { bpf_xdp_store_bytes(self.ctx, off, src as *mut _, len) == 0 }
    }
    #[inline(always)]
    fn fix_checksum(&self, l4_off: usize, pseudo: u16, acc: u32) -> bool {
        let Some(p) = ptr_at::<[u8; 2]>(self.data(), self.data_end(), l4_off + 16) else {
            return true;
        };
        let p = p as *mut [u8; 2];
        // SAFETY: `ptr_at` checked that the two bytes of the checksum field
        // lie inside the linear part; XDP may write the frame.
        let check = u16::from_be_bytes(unsafe { *p });
        if check == pseudo {
            // CHECKSUM_PARTIAL (a locally sent packet, as on veth with
            // offloads on): the field only holds the pseudo-header sum, and
            // whoever sends the packet on computes the real checksum over the
            // payload as it is now. Updating the field would corrupt it.
            return false;
        }
        let new = csum::update(check, acc);
        // SAFETY: as above.
        unsafe { *p = new.to_be_bytes() };
        true
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `self.ctx` is this invocation's xdp_md, which the program
        // may read.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn bounce(&self) -> u32 {
        xdp_action::XDP_TX
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // A redirect that fails later (the tap went away) drops the frame.
        // SAFETY: a helper taking plain values.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
    #[inline(always)]
    fn redirectable(&self) -> bool {
        // A tap does not take multi-buffer frames (its XDP transmit has no
        // scatter-gather): such a frame would be lost on the way.
        let len = self.data_end() - self.data();
        if len != self.total_len() {
            return false;
        }
        // Nor a frame longer than its device's MTU: generic XDP sees GRO
        // packets whole, and one redirected to the tap is not segmented on
        // the way (as TC's are), so written back it could not be forwarded
        // (fragmentation needed, DF): bytes the kernel passed would be lost
        // after it, and their retransmission, starting inside them, could
        // not be re-inspected. Such a frame is dropped before anything of
        // it passes, as without a fallback. (Up to a standard frame with a
        // VLAN tag no helper call is needed.)
        if len <= 1518 {
            return true;
        }
        let mut mtu = 0u32;
        // SAFETY: `self.ctx` is this invocation's xdp_md; `mtu` is a local
        // the helper writes.
        unsafe { bpf_check_mtu(self.ctx as *mut _, 0, &mut mtu, 0, 0) == 0 }
    }
    // Multi-buffer frames (GSO on veth, jumbo frames) and generic XDP's
    // linearised GSO packets reach 64 KiB.
    const MAX_CHUNKS: u32 = 16;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
}

impl Packet for TcContext {
    #[inline(always)]
    fn raw(&self) -> *mut core::ffi::c_void {
        self.skb.skb as *mut _
    }
    #[inline(always)]
    unsafe fn from_raw(p: *mut core::ffi::c_void) -> Self {
        TcContext::new(p as *mut _)
    }
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn total_len(&self) -> usize {
        self.len() as usize
    }
    #[inline(always)]
    fn trim_to(&self, len: u32) -> bool {
        // SAFETY: `self.skb.skb` is this invocation's __sk_buff; the caller
        // holds no packet pointer.
        unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) == 0 }
    }
    #[inline(always)]
    fn load(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the caller gives `dst` room for `len` bytes; the helper
        // checks `off` and `len` against the skb.
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, off, dst as *mut _, len) == 0 }
    }
    #[inline(always)]
    fn store(&self, off: u32, src: *mut u8, len: u32) -> bool {
        // No BPF_F_RECOMPUTE_CSUM: the checksum field is changed by exactly
        // the opposite of the payload change, so the sum over the segment,
        // which a CHECKSUM_COMPLETE skb->csum holds, stays the same.
        // SAFETY: as in `load`, with `src` holding `len` bytes.
        unsafe { bpf_skb_store_bytes(self.skb.skb, off, src as *const _, len, 0) == 0 }
    }
    #[inline(always)]
    fn fix_checksum(&self, l4_off: usize, _pseudo: u16, acc: u32) -> bool {
        // Size 0: `to` is a precomputed difference. The kernel applies it to
        // a complete checksum and leaves a CHECKSUM_PARTIAL one alone.
        // `acc` sums big-endian word values; the kernel adds the difference
        // to the field as it sits in memory, in network byte order.
        let diff = csum::fold(acc).to_be() as u64;
        // SAFETY: `self.skb.skb` is this invocation's __sk_buff; the helper
        // checks the offset.
        unsafe {
            bpf_l4_csum_replace(self.skb.skb, (l4_off + 16) as u32, 0, diff, 0);
        }
        true
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // 0 on egress for a packet this host made; the arrival interface on
        // ingress (forwarded packets on egress never get this far: see
        // `inspector_tc_eg`).
        // SAFETY: `self.skb.skb` points to this invocation's __sk_buff,
        // whose fields the program may read.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }
    #[inline(always)]
    fn bounce(&self) -> u32 {
        // A packet that came in: the RST leaves by the interface it came in
        // on, through that interface's egress hook, which passes it (it
        // came in: see `inspector_tc_eg`). A packet this host made (on
        // egress, this host is the client): the RST goes back in, to the
        // local socket, through the ingress hook, which believes it as a
        // packet of a connection of this host. Sent out, it would go to
        // the wire addressed to this host.
        // SAFETY: as in `ingress_ifindex`; `bpf_redirect` takes plain
        // values.
        unsafe {
            let skb = self.skb.skb;
            let flags = if (*skb).ingress_ifindex == 0 {
                BPF_F_INGRESS as u64
            } else {
                0
            };
            bpf_redirect((*skb).ifindex, flags) as u32
        }
    }
    #[inline(always)]
    fn redirectable(&self) -> bool {
        true
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // To the tap's egress, where the daemon reads it; a GSO packet is
        // cut into segments there (the tap offers no offloads), and a
        // checksum left to the device is completed.
        // SAFETY: a helper taking plain values.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
    const MAX_CHUNKS: u32 = 16;
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
}
