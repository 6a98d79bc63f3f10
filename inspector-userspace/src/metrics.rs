//! Prometheus text exposition of the counters (`attach --metrics ADDR`).
//! A deliberately tiny HTTP responder: GET /metrics, one response per
//! connection; everything else gets 404.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use inspector_common::counters::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::stats::Snapshot;

/// The snapshot in Prometheus text format 0.0.4.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    for c in &s.counters {
        let help = Counter::ALL
            .iter()
            .find(|k| k.name() == c.name)
            .map(|k| k.help().trim())
            .unwrap_or("");
        let name = format!("inspector_{}_total", c.name);
        o.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            c.value
        ));
    }
    for (name, v, help) in [
        (
            "inspector_flows_tracked",
            s.flows_tracked,
            "Entries in the flow table.",
        ),
        (
            "inspector_flows_active",
            s.flows_active,
            "Tracked flows that saw neither FIN nor RST.",
        ),
    ] {
        o.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
        ));
    }
    o.push_str("# HELP inspector_commands_total Commands by verb; action is seen or masked.\n");
    o.push_str("# TYPE inspector_commands_total counter\n");
    for v in &s.verbs {
        o.push_str(&format!(
            "inspector_commands_total{{verb=\"{}\",action=\"seen\"}} {}\n",
            v.verb, v.seen
        ));
        o.push_str(&format!(
            "inspector_commands_total{{verb=\"{}\",action=\"masked\"}} {}\n",
            v.verb, v.masked
        ));
    }
    o
}

/// Binds `addr` (fails at once if it cannot) and returns the serving task.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))
}

pub async fn serve(listener: TcpListener, pin_dir: PathBuf) -> Result<()> {
    loop {
        let (mut sock, _) = listener
            .accept()
            .await
            .context("accepting a metrics client")?;
        let pin_dir = pin_dir.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if req.starts_with("GET ") && (path == "/metrics" || path == "/") {
                match Snapshot::read_pinned(&pin_dir) {
                    Ok(s) => ("200 OK", render(&s)),
                    Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
