//! Prometheus exposition of the counters (`attach --metrics ADDR`): GET
//! or HEAD /metrics, with any query string, answers the counters in text
//! format 0.0.4; anything else is 404.
//!
//! The values are read from the pinned maps on each scrape, so there is no
//! registry of live metrics: each scrape builds the metric families and the
//! `prometheus` crate's text encoder writes them (escaping, format). The
//! HTTP side is hyper's HTTP/1 server on the daemon's runtime, with a limit
//! on concurrent connections and on how long a client may take.

use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use inspector_common::counters::Counter;
use prometheus::{
    proto::{self, LabelPair, MetricFamily, MetricType},
    Encoder, TextEncoder,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::stats::Snapshot;

/// Scrapes served at once; a connection over the limit is closed at once
/// (a scraper tries again at its next interval).
const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say), so that a
/// persistent failure does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The Prometheus name of a `stats` counter: the convention puts the unit
/// last (`inspector_inspected_bytes_total`, not `bytes_inspected`). A
/// counter without an entry keeps its `stats` name.
pub fn metric_name(counter: &str) -> String {
    let base = match counter {
        "packets_seen" => "seen_packets",
        "packets_inspected" => "inspected_packets",
        "bytes_inspected" => "inspected_bytes",
        "commands_seen" => "seen_commands",
        "commands_masked" => "masked_commands",
        "bytes_masked" => "masked_bytes",
        "flows_created" => "created_flows",
        "flows_closed" => "closed_flows",
        "flows_expired" => "expired_flows",
        "flows_evicted" => "evicted_flows",
        "flows_reset" => "reset_flows",
        "flows_refused" => "refused_flows",
        "flows_reclaimed" => "reclaimed_flows",
        "flows_dropped" => "dropped_flows",
        "spoofed" => "spoofed_packets",
        "ehlo_keywords_masked" => "masked_ehlo_keywords",
        "banners_masked" => "masked_banners",
        "limit_command_line" => "command_line_limit_matches",
        "limit_rcpts" => "rcpt_limit_matches",
        "limit_address_length" => "address_length_limit_matches",
        "limit_address_chars" => "address_chars_limit_matches",
        "limit_header_line" => "header_line_limit_matches",
        "midstream" => "midstream_packets",
        "retrans_reinspected" => "reinspected_retransmissions",
        "retrans_acked" => "acked_retransmissions",
        "retrans_conflicts" => "conflicting_retransmissions",
        "retrans_unverifiable" => "unverifiable_retransmissions",
        "malformed" => "malformed_packets",
        "checksum_partial" => "checksum_partial_packets",
        "dropped" => "dropped_packets",
        "diverted" => "diverted_segments",
        "reassembled" => "reassembled_segments",
        "fallback_drops" => "fallback_dropped_segments",
        other => other,
    };
    format!("inspector_{base}_total")
}

/// The snapshot as Prometheus metric families: every counter of `stats`
/// (unit-last names, [`metric_name`]), the flow-table gauges,
/// `inspector_commands_total` by verb and action (`passed` or `masked`,
/// which add up to the commands of that verb), and
/// `inspector_build_info`.
pub fn families(s: &Snapshot) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    for c in &s.counters {
        let help = Counter::ALL
            .iter()
            .find(|k| k.name() == c.name)
            .map(|k| k.help().trim())
            .unwrap_or("");
        out.push(family(
            &metric_name(c.name),
            help,
            MetricType::COUNTER,
            vec![sample(&[], c.value, MetricType::COUNTER)],
        ));
    }
    out.push(family(
        &metric_name("flows_evicted"),
        "Flow entries the LRU evicted under pressure (created - tracked - expired).",
        MetricType::COUNTER,
        vec![sample(&[], s.flows_evicted(), MetricType::COUNTER)],
    ));
    for (name, v, help) in [
        (
            "inspector_tracked_flows",
            s.flows_tracked,
            "Entries in the flow table.",
        ),
        (
            "inspector_active_flows",
            s.flows_active,
            "Tracked flows that saw neither FIN nor RST.",
        ),
    ] {
        out.push(family(
            name,
            help,
            MetricType::GAUGE,
            vec![sample(&[], v, MetricType::GAUGE)],
        ));
    }
    let commands = s
        .verbs
        .iter()
        .flat_map(|v| {
            [
                ("passed", v.seen.saturating_sub(v.masked)),
                ("masked", v.masked),
            ]
            .map(|(action, n)| {
                sample(
                    &[("verb", v.verb), ("action", action)],
                    n,
                    MetricType::COUNTER,
                )
            })
        })
        .collect();
    out.push(family(
        "inspector_commands_total",
        "Commands by verb slot; action is passed or masked (they add up to the commands seen).",
        MetricType::COUNTER,
        commands,
    ));
    out.push(family(
        "inspector_build_info",
        "Always 1; the labels say which inspector serves these metrics.",
        MetricType::GAUGE,
        vec![sample(
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
            MetricType::GAUGE,
        )],
    ));
    out
}

fn family(name: &str, help: &str, kind: MetricType, samples: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(samples);
    f
}

/// One sample. Labels stay in the order given (verb first), as built by
/// hand rather than through the crate's label-sorting metric vectors.
fn sample(labels: &[(&str, &str)], value: u64, kind: MetricType) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(n, v)| {
                let mut l = LabelPair::default();
                l.set_name(n.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    );
    // The exposition format carries every value as a float; counters are
    // exact up to 2^53.
    let value = value as f64;
    if kind == MetricType::GAUGE {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    } else {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    }
    m
}

/// The snapshot in Prometheus text format 0.0.4.
pub fn render(s: &Snapshot) -> Result<String> {
    TextEncoder::new()
        .encode_to_string(&families(s))
        .context("encoding the metrics")
}

/// Binds `addr`, so that a taken port fails `attach` before it changes
/// anything.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))
}

/// Serves scrapes on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, pin_dir: std::path::PathBuf) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pin_dir: Arc<Path> = pin_dir.into();
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                log::warn!("accepting a metrics client: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let pin_dir = pin_dir.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &pin_dir);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), service);
            // A client error or a timeout only ends that connection.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn respond(req: &Request<Incoming>, pin_dir: &Path) -> Response<Full<Bytes>> {
    // Any query string is ignored (scrapers add their own parameters);
    // HEAD gets the headers of GET (hyper sends no body for it).
    let scrape =
        matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path() == "/metrics";
    let (status, body) = if !scrape {
        (StatusCode::NOT_FOUND, "try /metrics\n".to_string())
    } else {
        match Snapshot::read_pinned(pin_dir).and_then(|s| render(&s)) {
            Ok(text) => (StatusCode::OK, text),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        TextEncoder::new()
            .format_type()
            .parse()
            .expect("the text format's content type is a valid header value"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CounterValue, VerbValue};

    fn snapshot() -> Snapshot {
        Snapshot {
            counters: Counter::ALL
                .iter()
                .enumerate()
                .map(|(i, c)| CounterValue {
                    name: c.name(),
                    value: i as u64 * 1000 + 7,
                })
                .collect(),
            verbs: vec![
                VerbValue {
                    verb: "STARTTLS",
                    seen: 3,
                    masked: 2,
                },
                VerbValue {
                    verb: "EHLO",
                    seen: 9_007_199_254_740_992,
                    masked: 0,
                },
            ],
            flows_tracked: 5,
            flows_active: 4,
        }
    }

    /// The exposition scrapers and the operator tests read: names, TYPE
    /// lines, label order, integer values.
    #[test]
    fn renders_every_counter_gauge_and_verb() {
        let text = render(&snapshot()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, c) in Counter::ALL.iter().enumerate() {
            let name = metric_name(c.name());
            assert!(
                lines.contains(&format!("# TYPE {name} counter").as_str()),
                "{text}"
            );
            let help = format!("# HELP {name} {}", c.help().trim());
            assert!(lines.contains(&help.as_str()), "{text}");
            let value = format!("{name} {}", i * 1000 + 7);
            assert!(lines.contains(&value.as_str()), "{text}");
        }
        for want in [
            "# TYPE inspector_tracked_flows gauge",
            "inspector_tracked_flows 5",
            "# TYPE inspector_active_flows gauge",
            "inspector_active_flows 4",
            "# TYPE inspector_commands_total counter",
            "inspector_commands_total{verb=\"STARTTLS\",action=\"passed\"} 1",
            "inspector_commands_total{verb=\"STARTTLS\",action=\"masked\"} 2",
            "inspector_commands_total{verb=\"EHLO\",action=\"passed\"} 9007199254740992",
            "inspector_commands_total{verb=\"EHLO\",action=\"masked\"} 0",
            "inspector_inspected_bytes_total 2007",
            "inspector_evicted_flows_total 0",
        ] {
            assert!(lines.contains(&want), "no `{want}` in:\n{text}");
        }
        assert!(
            lines.contains(
                &format!(
                    "inspector_build_info{{version=\"{}\"}} 1",
                    env!("CARGO_PKG_VERSION")
                )
                .as_str()
            ),
            "{text}"
        );
    }

    /// Every counter has its own name, and every name ends in `_total`.
    #[test]
    fn metric_names_are_unique() {
        let mut names: Vec<String> = Counter::ALL.iter().map(|c| metric_name(c.name())).collect();
        names.push(metric_name("flows_evicted"));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "{names:?}");
        assert!(names.iter().all(|m| m.ends_with("_total")));
    }
}
