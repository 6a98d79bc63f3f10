//! What the kernel says runs on an interface's hooks, whoever attached it:
//! the XDP program (rtnetlink, as `ip link` reads it) and the TCX programs
//! of each direction (BPF_PROG_QUERY). `attach` uses it to refuse a second
//! inspector on an interface, whatever its mode and pin dir, instead of
//! trusting only its own pin dir.

use anyhow::{Context, Result};
use aya::programs::{loaded_programs, tc::TcAttachType, SchedClassifier};
use rustix::net::{recv, send, socket, AddressFamily, RecvFlags, SendFlags, SocketType};

use crate::{
    links::Hook,
    loader::{TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM},
};

/// rtnetlink constants (linux/rtnetlink.h, linux/netlink.h, linux/if_link.h).
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
/// Attribute type bits (the rest are NLA_F_NESTED and NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A program of ours found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub hook: Hook,
    pub program_id: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The netlink attributes in `b`: `(type, payload)`.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// The id of the XDP program on the interface `ifindex`, from its
/// RTM_NEWLINK (IFLA_XDP / IFLA_XDP_PROG_ID).
pub fn xdp_program_id(ifindex: u32) -> Result<Option<u32>> {
    let sock = socket(AddressFamily::NETLINK, SocketType::RAW, None)
        .context("opening an rtnetlink socket")?;
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let total = req.len() as u32;
    req[0..4].copy_from_slice(&total.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, type 0, index, flags 0, change 0.
    req[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    send(&sock, &req, SendFlags::empty()).context("asking rtnetlink for the interface")?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = recv(&sock, &mut buf[..], RecvFlags::empty())
        .context("reading the interface from rtnetlink")?;
    let msg = &buf[..n];
    let len = u32_at(msg, 0).context("short rtnetlink reply")? as usize;
    let msg = msg.get(..len).context("truncated rtnetlink reply")?;
    match u16_at(msg, 4) {
        Some(RTM_NEWLINK) => {}
        Some(NLMSG_ERROR) => {
            let errno = u32_at(msg, NLMSG_HDRLEN).unwrap_or(0) as i32;
            anyhow::bail!(
                "rtnetlink refused to describe interface {ifindex}: {}",
                std::io::Error::from_raw_os_error(-errno)
            );
        }
        other => anyhow::bail!("unexpected rtnetlink reply type {other:?}"),
    }
    let link_attrs = msg.get(NLMSG_HDRLEN + IFINFOMSG_LEN..).unwrap_or_default();
    let id = attrs(link_attrs)
        .find(|(k, _)| *k == IFLA_XDP)
        .and_then(|(_, xdp)| attrs(xdp).find(|(k, _)| *k == IFLA_XDP_PROG_ID))
        .and_then(|(_, id)| u32_at(id, 0))
        .filter(|id| *id != 0);
    Ok(id)
}

/// The index of the interface `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    // SIOCGIFINDEX needs a socket of the caller's network namespace, any kind.
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)
        .context("opening a socket to look up interfaces")?;
    rustix::net::netdevice::name_to_index(&sock, name).with_context(|| {
        format!("unknown interface `{name}` (see `ip link` for the interfaces of this network namespace)")
    })
}

/// The name of the loaded program `id`, if it is still loaded. Looking a
/// program up by id needs CAP_SYS_ADMIN: without it the kernel says EPERM,
/// and that is an error here, not "no such program".
fn program_name(id: u32) -> Result<Option<String>> {
    for p in loaded_programs() {
        match p {
            Ok(p) if p.id() == id => return Ok(p.name_as_str().map(str::to_string)),
            Ok(_) => {}
            Err(e) if is_eperm(&e) => anyhow::bail!("{e}"),
            Err(_) => {} // unloaded meanwhile
        }
    }
    Ok(None)
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) {
                return true;
            }
        }
        if c.to_string().contains("Operation not permitted") {
            return true;
        }
        cur = c.source();
    }
    false
}

/// What a missing CAP_SYS_ADMIN leaves unchecked, for the log.
fn unchecked(iface: &str) {
    log::warn!(
        "could not check whether another inspector runs on `{iface}`: looking programs up \
         by id needs CAP_SYS_ADMIN"
    );
}

/// The inspector programs (by name) the kernel runs on `iface`'s XDP hook
/// and TCX hooks, whichever process attached them.
pub fn inspectors_on(iface: &str, ifindex: u32) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut blind = false;
    if let Some(id) = xdp_program_id(ifindex)? {
        match program_name(id) {
            Ok(name) if name.as_deref() == Some(XDP_PROGRAM) => out.push(Found {
                hook: Hook::Xdp,
                program_id: id,
            }),
            Ok(_) => {}
            Err(_) => blind = true,
        }
    }
    for (hook, t) in [
        (Hook::TcIngress, TcAttachType::Ingress),
        (Hook::TcEgress, TcAttachType::Egress),
    ] {
        // Before Linux 6.6 there is no TCX to ask (and no TC mode).
        let progs = match SchedClassifier::query_tcx(iface, t) {
            Ok((_, progs)) => progs,
            Err(e) if is_eperm(&e) => {
                blind = true;
                continue;
            }
            Err(_) => continue,
        };
        for p in progs {
            // Either TC program on either hook: an instance from before
            // the egress program ran `inspector_tc` on both.
            if matches!(p.name_as_str(), Some(TC_PROGRAM | TC_EGRESS_PROGRAM)) {
                out.push(Found {
                    hook,
                    program_id: p.id(),
                });
            }
        }
    }
    if blind {
        unchecked(iface);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_attributes() {
        // IFLA_MTU (4 bytes), then IFLA_XDP holding IFLA_XDP_ATTACHED (1
        // byte, padded) and IFLA_XDP_PROG_ID.
        let mut b = Vec::new();
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&4u16.to_ne_bytes());
        b.extend_from_slice(&1500u32.to_ne_bytes());
        b.extend_from_slice(&20u16.to_ne_bytes());
        b.extend_from_slice(&(IFLA_XDP | 0x8000).to_ne_bytes());
        b.extend_from_slice(&5u16.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&[1, 0, 0, 0]);
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&IFLA_XDP_PROG_ID.to_ne_bytes());
        b.extend_from_slice(&77u32.to_ne_bytes());
        let all: Vec<u16> = attrs(&b).map(|(k, _)| k).collect();
        assert_eq!(all, [4, IFLA_XDP]);
        let xdp = attrs(&b).find(|(k, _)| *k == IFLA_XDP).unwrap().1;
        let id = attrs(xdp).find(|(k, _)| *k == IFLA_XDP_PROG_ID).unwrap().1;
        assert_eq!(u32_at(id, 0), Some(77));
    }
}
