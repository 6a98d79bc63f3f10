//! Ethernet / IPv4 or IPv6 / TCP frames for BPF_PROG_TEST_RUN, with real
//! IP header and TCP checksums, and a [`Session`] that keeps the sequence
//! and acknowledgement numbers of both directions consistent.
//!
//! (The tests crate has a richer builder; xtask cannot depend on it, because
//! that would make xtask depend on the eBPF build, which `cargo xtask setup`
//! must be able to install first.)

pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The test bed's client and server addresses (these frames never leave
/// BPF_PROG_TEST_RUN).
const CLIENT_V4: [u8; 4] = [10, 200, 1, 2];
const SERVER_V4: [u8; 4] = [10, 200, 2, 2];
const CLIENT_V6: [u8; 16] = [0xfd, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER_V6: [u8; 16] = [0xfd, 0, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The Internet checksum (RFC 1071) of the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u16::from_be_bytes([hi, b]) as u32,
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u16::from_be_bytes([hi, 0]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One TCP segment, from client to server or back.
#[derive(Clone, Debug)]
pub struct Segment<'a> {
    pub v6: bool,
    pub from_client: bool,
    pub client_port: u16,
    pub server_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let (sport, dport) = if self.from_client {
            (self.client_port, self.server_port)
        } else {
            (self.server_port, self.client_port)
        };
        let mut tcp = Vec::with_capacity(20 + self.payload.len());
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(5 << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(self.payload);
        let tcp_len = tcp.len();

        let mut f = Vec::with_capacity(14 + 40 + tcp_len);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        if self.v6 {
            let (src, dst) = if self.from_client {
                (CLIENT_V6, SERVER_V6)
            } else {
                (SERVER_V6, CLIENT_V6)
            };
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&(tcp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            let c = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.push(6); // next header: TCP
            f.push(64);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
        } else {
            let (src, dst) = if self.from_client {
                (CLIENT_V4, SERVER_V4)
            } else {
                (SERVER_V4, CLIENT_V4)
            };
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            let c = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = Vec::with_capacity(20);
            ip.extend_from_slice(&[0x45, 0]);
            ip.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&dst);
            let c = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&tcp);
        f
    }
}

/// Whether the IP header checksum (IPv4) and the TCP checksum of a frame
/// built here are correct: a masked frame must still be valid.
pub fn checksums_ok(frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if frame.len() >= 34 => {
            let ip = &frame[14..34];
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if checksum(&[ip]) != 0 || frame.len() < 14 + total {
                return false;
            }
            let tcp = &frame[34..14 + total];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&ip[12..20]);
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            checksum(&[&pseudo, tcp]) == 0
        }
        0x86dd if frame.len() >= 54 => {
            let ip = &frame[14..54];
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if frame.len() < 54 + len {
                return false;
            }
            let tcp = &frame[54..54 + len];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&ip[8..40]);
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            checksum(&[&pseudo, tcp]) == 0
        }
        _ => false,
    }
}

/// Both directions of one TCP connection to an SMTP port, as a real client
/// and server would number them.
#[derive(Clone, Debug)]
pub struct Session {
    pub v6: bool,
    pub client_port: u16,
    pub server_port: u16,
    /// Next sequence number of each side.
    pub client_seq: u32,
    pub server_seq: u32,
}

impl Session {
    pub fn new(v6: bool, client_port: u16, server_port: u16) -> Session {
        Session {
            v6,
            client_port,
            server_port,
            client_seq: 1_000_000,
            server_seq: 7_000_000,
        }
    }

    fn seg<'a>(
        &self,
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        p: &'a [u8],
    ) -> Segment<'a> {
        Segment {
            v6: self.v6,
            from_client,
            client_port: self.client_port,
            server_port: self.server_port,
            seq,
            ack,
            flags,
            payload: p,
        }
    }

    /// The client's SYN.
    pub fn syn(&mut self) -> Vec<u8> {
        let f = self.seg(true, self.client_seq, 0, TCP_SYN, &[]).frame();
        self.client_seq = self.client_seq.wrapping_add(1);
        f
    }

    /// The server's SYN-ACK.
    pub fn syn_ack(&mut self) -> Vec<u8> {
        let f = self
            .seg(
                false,
                self.server_seq,
                self.client_seq,
                TCP_SYN | TCP_ACK,
                &[],
            )
            .frame();
        self.server_seq = self.server_seq.wrapping_add(1);
        f
    }

    /// A client data segment at the next client sequence number; advances.
    pub fn client(&mut self, payload: &[u8]) -> Vec<u8> {
        let f = self.client_peek(payload);
        self.client_seq = self.client_seq.wrapping_add(payload.len() as u32);
        f
    }

    /// The same segment without advancing (the measured one).
    pub fn client_peek(&self, payload: &[u8]) -> Vec<u8> {
        self.seg(
            true,
            self.client_seq,
            self.server_seq,
            TCP_PSH | TCP_ACK,
            payload,
        )
        .frame()
    }

    /// A server data segment; advances.
    pub fn server(&mut self, payload: &[u8]) -> Vec<u8> {
        let f = self
            .seg(
                false,
                self.server_seq,
                self.client_seq,
                TCP_PSH | TCP_ACK,
                payload,
            )
            .frame();
        self.server_seq = self.server_seq.wrapping_add(payload.len() as u32);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        for v6 in [false, true] {
            let mut s = Session::new(v6, 40000, 25);
            for f in [
                s.syn(),
                s.syn_ack(),
                s.server(b"220 x\r\n"),
                s.client(b"EHLO odd-length\r\n"),
            ] {
                assert!(checksums_ok(&f), "v6={v6}: {f:02x?}");
            }
            let mut f = s.client_peek(b"NOOP\r\n");
            let n = f.len();
            f[n - 3] ^= 1;
            assert!(!checksums_ok(&f));
        }
    }

    #[test]
    fn known_ipv4_header_checksum() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&h]), 0xb861);
        assert_eq!(checksum(&[&h[..3], &h[3..]]), 0xb861);
    }

    #[test]
    fn frame_sizes() {
        let s = Session::new(false, 1, 25);
        assert_eq!(s.client_peek(&[b'a'; 100]).len(), 14 + 20 + 20 + 100);
        let s6 = Session::new(true, 1, 25);
        assert_eq!(s6.client_peek(&[b'a'; 40]).len(), 14 + 40 + 20 + 40);
    }
}
