//! Hand-built frames for BPF_PROG_TEST_RUN: Ethernet with optional VLAN
//! tags, IPv4 (with options) or IPv6 (with extension headers), TCP (with
//! options) or UDP, payload. IP header and TCP/UDP checksums are computed for
//! real, here, independently of the program under test; [`checksums_ok`]
//! verifies those of a frame the program changed. Every length field can be
//! made to lie.
//!
//! ```
//! use inspector_testkit::frame::{Frame, Ipv4, Tcp};
//! let bytes = Frame::ipv4(Ipv4::tcp(Tcp::new(40000, 25).payload(b"EHLO x\r\n")))
//!     .vlan(0x8100, 10)
//!     .bytes();
//! assert_eq!(bytes.len(), 14 + 4 + 20 + 20 + 8);
//! ```

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Addresses used in built frames (the test bed's client and server; these
/// frames never leave BPF_PROG_TEST_RUN).
pub const CLIENT_V4: [u8; 4] = [10, 200, 1, 2];
pub const SERVER_V4: [u8; 4] = [10, 200, 2, 2];
pub const CLIENT_V6: [u8; 16] = [0xfd, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const SERVER_V6: [u8; 16] = [0xfd, 0, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The Internet checksum (RFC 1071) of the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let data: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the IPv4 header checksum and the TCP checksum of a frame are
/// right: untagged Ethernet, IPv4 (with or without options) or IPv6 without
/// extension headers, TCP. A masked frame must still be valid. The sums are
/// recomputed from the frame's own bytes with [`checksum`].
pub fn checksums_ok(frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    let ip = &frame[14..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP if ip.len() >= 20 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if ihl < 20 || total < ihl || ip.len() < total || checksum(&[&ip[..ihl]]) != 0 {
                return false;
            }
            let tcp = &ip[ihl..total];
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, ip[9]]);
            pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            ip[9] == IPPROTO_TCP && checksum(&[&pseudo, tcp]) == 0
        }
        ETH_P_IPV6 if ip.len() >= 40 => {
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if ip[6] != IPPROTO_TCP || ip.len() < 40 + len {
                return false;
            }
            let tcp = &ip[40..40 + len];
            let mut pseudo = ip[8..40].to_vec();
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
            checksum(&[&pseudo, tcp]) == 0
        }
        _ => false,
    }
}

/// A TCP segment.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Data offset to write instead of the true one (in 32-bit words).
    pub doff_override: Option<u8>,
}

impl Tcp {
    /// A PSH+ACK segment with no payload.
    pub fn new(src_port: u16, dst_port: u16) -> Tcp {
        Tcp {
            src_port,
            dst_port,
            seq: 1_000_000,
            ack: 2_000_000,
            flags: TCP_PSH | TCP_ACK,
            window: 64240,
            options: Vec::new(),
            payload: Vec::new(),
            doff_override: None,
        }
    }

    pub fn payload(mut self, p: &[u8]) -> Tcp {
        self.payload = p.to_vec();
        self
    }

    /// A SYN whose sequence number is one before [`Tcp::new`]'s, so that
    /// a default segment is the first one after it.
    pub fn syn(src_port: u16, dst_port: u16) -> Tcp {
        let mut t = Tcp::new(src_port, dst_port).flags(TCP_SYN);
        t.seq = t.seq.wrapping_sub(1);
        t.ack = 0;
        t
    }

    pub fn seq(mut self, seq: u32) -> Tcp {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Tcp {
        self.ack = ack;
        self
    }

    pub fn flags(mut self, flags: u8) -> Tcp {
        self.flags = flags;
        self
    }

    /// TCP options; must be a multiple of 4 bytes (pad with NOPs).
    pub fn options(mut self, o: &[u8]) -> Tcp {
        assert!(
            o.len().is_multiple_of(4) && o.len() <= 40,
            "TCP options: multiple of 4, at most 40"
        );
        self.options = o.to_vec();
        self
    }

    /// Writes `words` as the data offset, whatever the true header length.
    pub fn lie_doff(mut self, words: u8) -> Tcp {
        self.doff_override = Some(words);
        self
    }

    pub fn header_len(&self) -> usize {
        20 + self.options.len()
    }

    /// The segment, with its checksum over `pseudo` (the pseudo header).
    fn encode(&self, pseudo: &[u8]) -> Vec<u8> {
        let doff = self.doff_override.unwrap_or((self.header_len() / 4) as u8);
        let mut h = Vec::with_capacity(self.header_len() + self.payload.len());
        h.extend_from_slice(&self.src_port.to_be_bytes());
        h.extend_from_slice(&self.dst_port.to_be_bytes());
        h.extend_from_slice(&self.seq.to_be_bytes());
        h.extend_from_slice(&self.ack.to_be_bytes());
        h.push(doff << 4);
        h.push(self.flags);
        h.extend_from_slice(&self.window.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        h.extend_from_slice(&self.options);
        h.extend_from_slice(&self.payload);
        let c = checksum(&[pseudo, &h]);
        h[16..18].copy_from_slice(&c.to_be_bytes());
        h
    }
}

/// Timestamps, padded to 12 bytes: data offset 8.
pub const TCP_OPTS_12: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

/// MSS, window scale, SACK-permitted, timestamps and two SACK blocks: the
/// full 40 bytes, data offset 15.
pub const TCP_OPTS_40: [u8; 40] = [
    2, 4, 0x05, 0xb4, // MSS 1460
    1, 3, 3, 7, // NOP, window scale 7
    4, 2, 1, 1, // SACK permitted, NOP, NOP
    8, 10, 0, 0, 0, 1, 0, 0, 0, 2, // timestamps
    5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40, // SACK, 2 blocks
];

/// A UDP datagram.
#[derive(Clone, Debug)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

impl Udp {
    pub fn new(src_port: u16, dst_port: u16, payload: &[u8]) -> Udp {
        Udp {
            src_port,
            dst_port,
            payload: payload.to_vec(),
        }
    }

    fn encode(&self, pseudo: &[u8]) -> Vec<u8> {
        let len = (8 + self.payload.len()) as u16;
        let mut h = Vec::new();
        h.extend_from_slice(&self.src_port.to_be_bytes());
        h.extend_from_slice(&self.dst_port.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.payload);
        let c = match checksum(&[pseudo, &h]) {
            0 => 0xffff,
            c => c,
        };
        h[6..8].copy_from_slice(&c.to_be_bytes());
        h
    }
}

/// What an IP packet carries.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    /// Any protocol, bytes as given (no checksum).
    Raw(u8, Vec<u8>),
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            L4::Tcp(_) => IPPROTO_TCP,
            L4::Udp(_) => IPPROTO_UDP,
            L4::Raw(p, _) => *p,
        }
    }

    fn len(&self) -> usize {
        match self {
            L4::Tcp(t) => t.header_len() + t.payload.len(),
            L4::Udp(u) => 8 + u.payload.len(),
            L4::Raw(_, b) => b.len(),
        }
    }

    fn encode(&self, pseudo: &[u8]) -> Vec<u8> {
        match self {
            L4::Tcp(t) => t.encode(pseudo),
            L4::Udp(u) => u.encode(pseudo),
            L4::Raw(_, b) => b.clone(),
        }
    }
}

/// An IPv4 packet.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub ident: u16,
    /// Flags and fragment offset field (DF = 0x4000, MF = 0x2000,
    /// offset in 8-byte units in the low 13 bits).
    pub frag: u16,
    /// Options, a multiple of 4 bytes, at most 40.
    pub options: Vec<u8>,
    pub l4: L4,
    /// Lies: version nibble, IHL (in words), total length.
    pub version: u8,
    pub ihl_override: Option<u8>,
    pub total_len_override: Option<u16>,
}

impl Ipv4 {
    /// Client to server, DF set.
    pub fn new(l4: L4) -> Ipv4 {
        Ipv4 {
            src: CLIENT_V4,
            dst: SERVER_V4,
            ttl: 64,
            ident: 0x1234,
            frag: 0x4000,
            options: Vec::new(),
            l4,
            version: 4,
            ihl_override: None,
            total_len_override: None,
        }
    }

    pub fn tcp(t: Tcp) -> Ipv4 {
        Ipv4::new(L4::Tcp(t))
    }

    pub fn udp(u: Udp) -> Ipv4 {
        Ipv4::new(L4::Udp(u))
    }

    /// Options (padded by the caller to a multiple of 4 bytes).
    pub fn options(mut self, o: &[u8]) -> Ipv4 {
        assert!(
            o.len().is_multiple_of(4) && o.len() <= 40,
            "IPv4 options: multiple of 4, at most 40"
        );
        self.options = o.to_vec();
        self
    }

    /// A fragment: `more` is the MF flag, `offset8` the offset in 8 bytes.
    pub fn fragment(mut self, more: bool, offset8: u16) -> Ipv4 {
        self.frag = if more { 0x2000 } else { 0 } | (offset8 & 0x1fff);
        self
    }

    /// Server to client instead of client to server.
    pub fn reply(mut self) -> Ipv4 {
        std::mem::swap(&mut self.src, &mut self.dst);
        self
    }

    pub fn lie_version(mut self, v: u8) -> Ipv4 {
        self.version = v;
        self
    }

    pub fn lie_ihl(mut self, words: u8) -> Ipv4 {
        self.ihl_override = Some(words);
        self
    }

    pub fn lie_total_len(mut self, len: u16) -> Ipv4 {
        self.total_len_override = Some(len);
        self
    }

    pub fn header_len(&self) -> usize {
        20 + self.options.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let proto = self.l4.proto();
        let l4_len = self.l4.len();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src);
        pseudo.extend_from_slice(&self.dst);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        let l4 = self.l4.encode(&pseudo);

        let ihl = self.ihl_override.unwrap_or((self.header_len() / 4) as u8);
        let total = self
            .total_len_override
            .unwrap_or((self.header_len() + l4.len()) as u16);
        let mut h = Vec::new();
        h.push((self.version << 4) | (ihl & 0x0f));
        h.push(0); // DSCP/ECN
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.ident.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(self.ttl);
        h.push(proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }
}

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub struct Ext {
    /// Its own protocol number (0, 43, 44, 51, 60).
    pub kind: u8,
    /// Bytes after the next-header and length bytes.
    pub body: Vec<u8>,
    /// Length byte to write instead of the true one.
    pub len_override: Option<u8>,
}

impl Ext {
    /// Hop-by-hop options with a router alert (8 bytes).
    pub fn hop_by_hop() -> Ext {
        Ext {
            kind: IPPROTO_HOPOPTS,
            body: vec![5, 2, 0, 0, 1, 0], // router alert (MLD), PadN(0)
            len_override: None,
        }
    }

    /// Destination options of `units` x 8 bytes, filled with PadN.
    pub fn dest_opts(units: usize) -> Ext {
        assert!(units >= 1);
        let n = units * 8 - 2;
        let mut body = vec![1, (n - 2) as u8];
        body.resize(n, 0);
        Ext {
            kind: IPPROTO_DSTOPTS,
            body,
            len_override: None,
        }
    }

    /// A routing header with no segments left (8 bytes; routing type 253,
    /// reserved for experiments, so nothing would process it).
    pub fn routing() -> Ext {
        Ext {
            kind: IPPROTO_ROUTING,
            body: vec![253, 0, 0, 0, 0, 0],
            len_override: None,
        }
    }

    /// A fragment header (8 bytes).
    pub fn fragment(offset8: u16, more: bool, ident: u32) -> Ext {
        let field = (offset8 << 3) | more as u16;
        let mut body = field.to_be_bytes().to_vec();
        body.extend_from_slice(&ident.to_be_bytes());
        Ext {
            kind: IPPROTO_FRAGMENT,
            body,
            len_override: None,
        }
    }

    /// An authentication header with a 12-byte ICV (24 bytes).
    pub fn auth() -> Ext {
        let mut body = vec![0, 0]; // reserved
        body.extend_from_slice(&0x1000u32.to_be_bytes()); // SPI
        body.extend_from_slice(&7u32.to_be_bytes()); // sequence
        body.extend_from_slice(&[0xab; 12]); // ICV
        Ext {
            kind: IPPROTO_AH,
            body,
            len_override: None,
        }
    }

    pub fn lie_len(mut self, len: u8) -> Ext {
        self.len_override = Some(len);
        self
    }

    fn len_byte(&self) -> u8 {
        let total = 2 + self.body.len();
        match self.kind {
            IPPROTO_FRAGMENT => 0, // reserved: the length is fixed
            IPPROTO_AH => {
                assert!(total.is_multiple_of(4) && total >= 12);
                (total / 4 - 2) as u8
            }
            _ => {
                assert!(total.is_multiple_of(8));
                (total / 8 - 1) as u8
            }
        }
    }
}

/// An IPv6 packet.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    pub ext: Vec<Ext>,
    pub l4: L4,
    pub version: u8,
    pub payload_len_override: Option<u16>,
}

impl Ipv6 {
    /// Client to server.
    pub fn new(l4: L4) -> Ipv6 {
        Ipv6 {
            src: CLIENT_V6,
            dst: SERVER_V6,
            hop_limit: 64,
            ext: Vec::new(),
            l4,
            version: 6,
            payload_len_override: None,
        }
    }

    pub fn tcp(t: Tcp) -> Ipv6 {
        Ipv6::new(L4::Tcp(t))
    }

    pub fn udp(u: Udp) -> Ipv6 {
        Ipv6::new(L4::Udp(u))
    }

    /// Appends an extension header (in order, before the transport).
    pub fn ext(mut self, e: Ext) -> Ipv6 {
        self.ext.push(e);
        self
    }

    /// Server to client instead of client to server.
    pub fn reply(mut self) -> Ipv6 {
        std::mem::swap(&mut self.src, &mut self.dst);
        self
    }

    pub fn lie_version(mut self, v: u8) -> Ipv6 {
        self.version = v;
        self
    }

    pub fn lie_payload_len(mut self, len: u16) -> Ipv6 {
        self.payload_len_override = Some(len);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let proto = self.l4.proto();
        let l4_len = self.l4.len();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src);
        pseudo.extend_from_slice(&self.dst);
        pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        let l4 = self.l4.encode(&pseudo);

        let mut exts = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map(|n| n.kind).unwrap_or(proto);
            exts.push(next);
            exts.push(e.len_override.unwrap_or_else(|| e.len_byte()));
            exts.extend_from_slice(&e.body);
        }
        let first = self.ext.first().map(|e| e.kind).unwrap_or(proto);
        let payload_len = self
            .payload_len_override
            .unwrap_or((exts.len() + l4.len()) as u16);
        let mut h = Vec::new();
        h.extend_from_slice(&[self.version << 4, 0, 0, 0]); // version, class, flow
        h.extend_from_slice(&payload_len.to_be_bytes());
        h.push(first);
        h.push(self.hop_limit);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&exts);
        h.extend_from_slice(&l4);
        h
    }
}

/// What the Ethernet frame carries.
#[derive(Clone, Debug)]
pub enum L3 {
    V4(Ipv4),
    V6(Ipv6),
    /// Any EtherType, bytes as given.
    Raw(u16, Vec<u8>),
}

/// An Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN tags, outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
    pub l3: L3,
    /// Zero padding up to this many bytes (Ethernet's 60-byte minimum).
    pub pad_to: usize,
}

impl Frame {
    pub fn new(l3: L3) -> Frame {
        Frame {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlans: Vec::new(),
            l3,
            pad_to: 0,
        }
    }

    pub fn ipv4(p: Ipv4) -> Frame {
        Frame::new(L3::V4(p))
    }

    pub fn ipv6(p: Ipv6) -> Frame {
        Frame::new(L3::V6(p))
    }

    /// An ARP request for the server's address.
    pub fn arp() -> Frame {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1]; // Ethernet, IPv4, request
        a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        a.extend_from_slice(&CLIENT_V4);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&SERVER_V4);
        let mut f = Frame::new(L3::Raw(ETH_P_ARP, a));
        f.dst_mac = [0xff; 6];
        f
    }

    /// Adds a VLAN tag inside the ones already there.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        self.vlans.push((tpid, vid & 0x0fff));
        self
    }

    pub fn pad_to(mut self, len: usize) -> Frame {
        self.pad_to = len;
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let (ethertype, l3) = match &self.l3 {
            L3::V4(p) => (ETH_P_IP, p.encode()),
            L3::V6(p) => (ETH_P_IPV6, p.encode()),
            L3::Raw(t, b) => (*t, b.clone()),
        };
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&l3);
        if f.len() < self.pad_to {
            f.resize(self.pad_to, 0);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // The worked example of the IPv4 header checksum (Wikipedia).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&h]), 0xb861);
        assert_eq!(checksum(&[&h[..3], &h[3..]]), 0xb861, "split anywhere");
        let mut h2 = h;
        h2[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&[&h2]), 0);
    }

    #[test]
    fn built_frames_have_valid_checksums() {
        let odd = Tcp::new(40000, 25).payload(b"EHLO odd-length\r\n");
        let frames = [
            Frame::ipv4(Ipv4::tcp(odd.clone()).options(&[1; 4])),
            Frame::ipv4(Ipv4::tcp(Tcp::syn(40000, 25)).reply()),
            Frame::ipv6(Ipv6::tcp(odd)),
        ];
        for f in frames {
            let mut b = f.bytes();
            assert!(checksums_ok(&b), "{b:02x?}");
            let n = b.len();
            b[n - 3] ^= 1;
            assert!(!checksums_ok(&b), "a flipped payload bit goes unnoticed");
        }
    }

    #[test]
    fn odd_length_checksum_pads_with_zero() {
        assert_eq!(checksum(&[&[0x01]]), !0x0100);
        assert_eq!(checksum(&[&[0x01, 0x02, 0x03]]), !(0x0102u16 + 0x0300));
    }

    #[test]
    fn layout_of_built_frames() {
        let f = Frame::ipv4(
            Ipv4::tcp(Tcp::new(1, 25).options(&TCP_OPTS_12).payload(b"QUIT\r\n")).options(&[1; 8]),
        )
        .vlan(ETH_P_8021AD, 100)
        .vlan(ETH_P_8021Q, 200)
        .bytes();
        assert_eq!(f.len(), 14 + 8 + 28 + 32 + 6);
        assert_eq!(&f[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&f[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&f[20..22], &ETH_P_IP.to_be_bytes());
        assert_eq!(f[22], 0x47);
        assert_eq!(u16::from_be_bytes([f[24], f[25]]), 28 + 32 + 6);
        assert_eq!(checksum(&[&f[22..50]]), 0, "IPv4 header checksum");
        assert_eq!(f[50 + 12] >> 4, 8, "TCP data offset");

        let f6 = Frame::ipv6(
            Ipv6::tcp(Tcp::new(25, 1))
                .ext(Ext::hop_by_hop())
                .ext(Ext::dest_opts(2)),
        )
        .bytes();
        assert_eq!(f6.len(), 14 + 40 + 8 + 16 + 20);
        assert_eq!(f6[14 + 6], IPPROTO_HOPOPTS);
        assert_eq!(&f6[54..56], &[IPPROTO_DSTOPTS, 0]);
        assert_eq!(&f6[62..64], &[IPPROTO_TCP, 1]);
        assert_eq!(u16::from_be_bytes([f6[18], f6[19]]), 8 + 16 + 20);
    }
}
