//! `inspector events`: the masked-command and drop events, as they happen.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use aya::maps::{Map, RingBuf};
use inspector_common::events::{Event, EVENTS_MAP};
use inspector_userspace::{events, flows::monotonic_ns, privilege};
use tokio::io::unix::AsyncFd;

use crate::{cli::EventsArgs, out};

/// Wall-clock time of a monotonic timestamp.
fn wall(ts_ns: u64) -> String {
    let age = Duration::from_nanos(monotonic_ns().saturating_sub(ts_ns));
    let t = SystemTime::now() - age;
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn run(args: EventsArgs) -> Result<()> {
    let EventsArgs { json, pin_dir } = args;
    privilege::require_bpf("events")?;
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
                        let w = wall(e.ts_ns);
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
