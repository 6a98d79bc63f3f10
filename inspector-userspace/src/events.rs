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
        kind::KEYWORD_MASKED => "ehlo-keyword-masked",
        kind::LIMIT => "limit",
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
        reason::BDAT_MASKED => "bdat-masked",
        reason::COMMAND_LINE_TOO_LONG => "command-line-too-long",
        reason::FLOW_DROPPED => "flow-dropped",
        reason::TOO_MANY_RCPTS => "too-many-recipients",
        reason::WRONG_INTERFACE => "wrong-interface",
        reason::WRONG_MAC => "wrong-mac",
        reason::NO_NEIGHBOUR => "no-neighbour",
        reason::NOT_ROUTED => "not-routed",
        reason::NO_SOCKET => "no-socket",
        reason::TABLE_FULL => "table-full",
        reason::CLIENT_CAP => "client-cap",
        reason::ADDRESS_TOO_LONG => "address-too-long",
        reason::ADDRESS_CHARS => "address-characters",
        reason::HEADER_LINE_TOO_LONG => "header-line-too-long",
        reason::TOO_LARGE => "too-large",
        reason::FALLBACK_FLOW_LIMIT => "fallback-flow-limit",
        reason::FALLBACK_TOTAL_LIMIT => "fallback-total-limit",
        reason::FALLBACK_TIMEOUT => "fallback-timeout",
        reason::FALLBACK_FLOW_GONE => "fallback-flow-gone",
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
        (kind::KEYWORD_MASKED, 0) => "mask-ehlo-keyword",
        (kind::KEYWORD_MASKED, _) => "would-mask-ehlo-keyword",
        (kind::LIMIT, _) => "limit",
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
    line_from_json(&to_json(e, wall))
}

/// The text line of an event given as its JSON object (what `attach`
/// relays to `inspector events`).
pub fn line_from_json(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut line = format!(
        "{} {} {} -> {} verb={} ({})",
        s("time"),
        s("action"),
        s("client"),
        s("server"),
        s("verb"),
        s("verb_slot")
    );
    if !s("reason").is_empty() {
        line.push_str(&format!(" reason={}", s("reason")));
    }
    line.push_str(&format!(" seq={}", v["seq"].as_u64().unwrap_or_default()));
    line
}

/// Stable identifier of each kind of journal line `attach` writes, so
/// that `journalctl -u inspector | grep MESSAGE_ID=...` (or a collector)
/// finds them whatever the wording around them.
pub fn message_id(e: &Event) -> &'static str {
    match e.kind {
        kind::MASKED => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a21",
        kind::DROPPED => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a22",
        kind::RESET => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a23",
        kind::MIDSTREAM => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a24",
        kind::KEYWORD_MASKED => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a26",
        kind::LIMIT => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a27",
        kind::SPOOFED => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a28",
        kind::REFUSED => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a29",
        _ => "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a2f",
    }
}

/// Message id of the line that counts the event lines rate limiting left
/// out.
pub const SUPPRESSED_MESSAGE_ID: &str = "b0f7e1c2a3d44e5f8a6b7c8d9e0f1a25";

/// One journal line for an event: `key=value` fields, values without
/// spaces (addresses, verb, reason), the message id first.
pub fn to_journal(e: &Event) -> String {
    let reason = match reason_name(e.reason) {
        "" => "-",
        r => r,
    };
    let verb = match verb_text(e) {
        v if v.is_empty() => "-".to_string(),
        v => v,
    };
    format!(
        "MESSAGE_ID={} action={} client={} server={} verb={verb} verb_slot={} reason={reason} \
         monitor={} seq={}",
        message_id(e),
        action(e),
        client(&e.flow),
        server(&e.flow),
        verb_name(e.verb_id),
        e.monitor != 0,
        e.seq
    )
}

/// One JSON object.
pub fn to_json(e: &Event, wall: &str) -> serde_json::Value {
    serde_json::json!({
        "version": crate::stats::JSON_VERSION,
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

/// Where a running `attach` relays events to `inspector events` readers:
/// the event ring has one consumer, so while `attach` runs it is that
/// consumer and every reader gets the events from it. One socket per pin
/// dir, in /run/inspector (root only).
pub fn socket_path(pin_dir: &std::path::Path) -> std::path::PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pin_dir.as_os_str().as_encoded_bytes() {
        // FNV-1a: a short stable name for any pin dir path.
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    std::path::Path::new(RUN_DIR).join(format!("events-{h:016x}.sock"))
}

/// Folder of the event sockets.
pub const RUN_DIR: &str = "/run/inspector";

/// Lines of the events a new reader gets first (those just before it
/// connected, as the ring would have kept them for it).
pub const BACKLOG: usize = 256;
