//! Decoding the kernel's event records for `inspector events`.

use std::net::{IpAddr, Ipv6Addr};

use inspector_common::{
    events::{kind, reason, Event},
    flow::FlowKey,
    verbs::verb_name,
};

/// An address from the flow key (IPv4-mapped addresses shown as IPv4).
pub fn addr(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn endpoint(a: [u8; 16], port: u16) -> String {
    match addr(a) {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The verb bytes as text: printable ASCII kept, anything else as `?`.
pub fn verb_text(e: &Event) -> String {
    e.verb
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| {
            if b.is_ascii_graphic() {
                *b as char
            } else {
                '?'
            }
        })
        .collect()
}

pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::MASKED => "masked",
        kind::DROPPED => "dropped",
        kind::MIDSTREAM => "midstream",
        kind::RESET => "reset",
        kind::SPOOFED => "spoofed",
        kind::REFUSED => "refused",
        _ => "unknown",
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        reason::OUT_OF_ORDER => "out-of-order",
        reason::CONFLICT => "conflicting-retransmission",
        reason::UNVERIFIABLE => "unverifiable-retransmission",
        reason::AWAITING_REPLY => "awaiting-reply",
        reason::TOO_MANY_MASKS => "too-many-masked-verbs",
        reason::FRAGMENT => "fragment",
        reason::MIDSTREAM => "midstream",
        reason::BYTES_BEFORE_REPLY => "bytes-sent-before-reply",
        reason::FLOW_RESET => "flow-was-reset",
        reason::WRONG_INTERFACE => "wrong-interface",
        reason::WRONG_MAC => "wrong-mac",
        reason::NO_NEIGHBOUR => "no-neighbour",
        reason::NOT_ROUTED => "not-routed",
        reason::NO_SOCKET => "no-socket",
        reason::TABLE_FULL => "table-full",
        reason::CLIENT_CAP => "client-cap",
        _ => "",
    }
}

/// What the operator sees: action, client, server, verb.
pub fn action(e: &Event) -> &'static str {
    match (e.kind, e.monitor) {
        (kind::MASKED, 0) => "mask",
        (kind::MASKED, _) => "would-mask",
        (kind::DROPPED, 0) => "drop",
        (kind::DROPPED, _) => "would-drop",
        (kind::MIDSTREAM, _) => "pass",
        (kind::RESET, 0) => "reset",
        (kind::RESET, _) => "would-reset",
        (kind::SPOOFED, 0) => "drop",
        (kind::SPOOFED, _) => "would-drop",
        (kind::REFUSED, 0) => "refuse",
        (kind::REFUSED, _) => "would-refuse",
        _ => "?",
    }
}

pub fn client(k: &FlowKey) -> String {
    endpoint(k.client, k.client_port)
}

pub fn server(k: &FlowKey) -> String {
    endpoint(k.server, k.server_port)
}

/// One line of text.
pub fn to_line(e: &Event, wall: &str) -> String {
    let mut line = format!(
        "{wall} {} {} -> {} verb={} ({})",
        action(e),
        client(&e.flow),
        server(&e.flow),
        verb_text(e),
        verb_name(e.verb_id)
    );
    if e.reason != 0 {
        line.push_str(&format!(" reason={}", reason_name(e.reason)));
    }
    line.push_str(&format!(" seq={}", e.seq));
    line
}

/// One JSON object.
pub fn to_json(e: &Event, wall: &str) -> serde_json::Value {
    serde_json::json!({
        "time": wall,
        "monotonic_ns": e.ts_ns,
        "action": action(e),
        "kind": kind_name(e.kind),
        "reason": reason_name(e.reason),
        "client": client(&e.flow),
        "server": server(&e.flow),
        "verb": verb_text(e),
        "verb_slot": verb_name(e.verb_id),
        "seq": e.seq,
    })
}
