//! `inspector events`: the masked-command and drop events, as they happen.

use anyhow::{Context, Result};
use aya::maps::{Map, RingBuf};
use inspector_common::events::{Event, EVENTS_MAP};
use inspector_userspace::{events, journal, privilege};
use tokio::io::unix::AsyncFd;

use crate::{cli::EventsArgs, out};

pub fn run(args: EventsArgs) -> Result<()> {
    let EventsArgs { json, pin_dir } = args;
    privilege::require_bpf("events")?;
    // A running `attach` is the ring's one consumer: read from it.
    let sock = events::socket_path(&pin_dir);
    if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
        return relayed(s, json, &sock);
    }
    let data = inspector_userspace::pin::open_map(&pin_dir, EVENTS_MAP, "event ring")?;
    let ring = RingBuf::try_from(Map::RingBuf(data)).context("event map has an unexpected type")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // SAFETY: the ring owns its fd, which stays open and the same for as
        // long as the AsyncFd owns the ring.
        let mut fd = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the event ring: {e}"))?;
        loop {
            tokio::select! {
                guard = fd.readable_mut() => {
                    let mut guard = guard?;
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if item.len() < std::mem::size_of::<Event>() {
                            continue;
                        }
                        // SAFETY: the item holds at least one Event (checked
                        // above), read unaligned, and Event is plain data
                        // for which every bit pattern is a value.
                        let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                        let w = journal::wall(e.ts_ns);
                        if json {
                            out::line(events::to_json(&e, &w))?;
                        } else {
                            out::line(events::to_line(&e, &w))?;
                        }
                    }
                    guard.clear_ready();
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

/// How long `events` waits for the next `attach` once the one it read
/// from stopped (`systemctl restart` starts the next one at once).
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Prints what the running `attach` relays (JSON lines), and goes on with
/// the next `attach` if one starts soon after (a restart); ends when none
/// does.
fn relayed(
    mut sock: std::os::unix::net::UnixStream,
    json: bool,
    path: &std::path::Path,
) -> Result<()> {
    use std::io::BufRead;
    loop {
        for line in std::io::BufReader::new(sock).lines() {
            let line = line.context("reading events from `inspector attach`")?;
            if json {
                out::line(&line)?;
            } else {
                let v: serde_json::Value =
                    serde_json::from_str(&line).context("an event from `attach` is not JSON")?;
                out::line(events::line_from_json(&v))?;
            }
        }
        let deadline = std::time::Instant::now() + RESTART_WAIT;
        sock = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(path) {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                log::info!("`inspector attach` stopped; no more events");
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
    }
}
