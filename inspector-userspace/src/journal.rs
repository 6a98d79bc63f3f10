//! What `attach` does with the kernel's events while it runs: one log
//! line each (to the journal under systemd), rate limited, and a relay to
//! every `inspector events` reader.
//!
//! The event ring has a single consumer position, shared by whoever reads
//! it: two readers would each get some of the events. So while `attach`
//! runs it is the only consumer, and `inspector events` connects to its
//! socket ([`crate::events::socket_path`]) instead of reading the ring.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use aya::maps::{Map, RingBuf};
use inspector_common::events::{Event, EVENTS_MAP};
use tokio::{
    io::{unix::AsyncFd, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};

use crate::{
    events::{self, BACKLOG, RUN_DIR, SUPPRESSED_MESSAGE_ID},
    flows::monotonic_ns,
};

/// Event lines logged per window; the rest are counted and said in one
/// line at the end of the window.
pub const LOG_BURST: u32 = 20;
/// The rate-limiting window.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// A fixed-window limit on log lines.
pub struct RateLimit {
    burst: u32,
    window: Duration,
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            burst,
            window,
            start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Ends the window if it is over: returns how many lines it suppressed
    /// (to be said), if any.
    pub fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.start) < self.window {
            return None;
        }
        self.start = now;
        self.logged = 0;
        Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0)
    }

    /// Whether a line may be logged now (if not, it is counted).
    pub fn allow(&mut self, now: Instant) -> (bool, Option<u64>) {
        let said = self.roll(now);
        if self.logged < self.burst {
            self.logged += 1;
            (true, said)
        } else {
            self.suppressed += 1;
            (false, said)
        }
    }
}

fn say_suppressed(n: u64, window: Duration) {
    log::warn!(
        "MESSAGE_ID={SUPPRESSED_MESSAGE_ID} suppressed={n} window_s={} \
         (event lines left out by the rate limit; `inspector events` shows them all)",
        window.as_secs()
    );
}

/// Wall-clock time of a monotonic timestamp.
pub fn wall(ts_ns: u64) -> String {
    let age = Duration::from_nanos(monotonic_ns().saturating_sub(ts_ns));
    humantime::format_rfc3339_millis(SystemTime::now() - age).to_string()
}

/// The relay's shared state: the last events and the live feed.
struct Feed {
    backlog: VecDeque<Arc<str>>,
    live: broadcast::Sender<Arc<str>>,
}

/// The socket `inspector events` connects to, removed when dropped.
pub struct Relay {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Relay {
    /// Binds the event socket of `pin_dir` (needs a tokio runtime). A
    /// stale socket of a dead instance is replaced: the pin dir lock
    /// already guarantees that no other `attach` runs on this pin dir.
    pub fn bind(pin_dir: &Path) -> Result<Relay> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(RUN_DIR)
            .with_context(|| format!("creating {RUN_DIR}"))?;
        let path = events::socket_path(pin_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listening for event readers on {}", path.display()))?;
        Ok(Relay { listener, path })
    }
}

/// Reads the event ring of `pin_dir` until the runtime stops: logs each
/// event (rate limited) and relays it to the readers connected to `relay`.
/// Events of this process (the reassembly fallback's drops) come in on
/// `own` and go the same way.
pub async fn run(
    pin_dir: &Path,
    relay: Relay,
    mut own: tokio::sync::mpsc::Receiver<Event>,
) -> Result<()> {
    let data = crate::pin::open_map(pin_dir, EVENTS_MAP, "event ring")?;
    let ring = RingBuf::try_from(Map::RingBuf(data)).context("event map has an unexpected type")?;
    // SAFETY: the ring owns its fd, which stays open and the same for as
    // long as the AsyncFd owns the ring.
    let mut fd = unsafe { AsyncFd::register(ring) }.context("polling the event ring")?;
    let feed = Arc::new(Mutex::new(Feed {
        backlog: VecDeque::with_capacity(BACKLOG),
        live: broadcast::channel(4096).0,
    }));
    let mut limit = RateLimit::new(LOG_BURST, LOG_WINDOW);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                    // above), read unaligned, and Event is plain data for
                    // which every bit pattern is a value.
                    let e: Event =
                        unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                    publish(&feed, &mut limit, &e);
                }
                guard.clear_ready();
            }
            // (Disabled for the rest of a round once no sender is left.)
            Some(e) = own.recv() => publish(&feed, &mut limit, &e),
            _ = tick.tick() => {
                if let Some(n) = limit.roll(Instant::now()) {
                    say_suppressed(n, LOG_WINDOW);
                }
            }
            conn = relay.listener.accept() => {
                match conn {
                    Ok((sock, _)) => {
                        let (backlog, live) = {
                            let f = feed.lock().expect("the feed lock is never poisoned");
                            (f.backlog.iter().cloned().collect::<Vec<_>>(), f.live.subscribe())
                        };
                        tokio::spawn(serve_reader(sock, backlog, live));
                    }
                    Err(e) => log::warn!("accepting an event reader: {e}"),
                }
            }
        }
    }
}

/// Logs `e` (within the rate limit) and relays it to every reader.
fn publish(feed: &Mutex<Feed>, limit: &mut RateLimit, e: &Event) {
    let (log_it, said) = limit.allow(Instant::now());
    if let Some(n) = said {
        say_suppressed(n, LOG_WINDOW);
    }
    if log_it {
        log::info!("{}", events::to_journal(e));
    }
    let line: Arc<str> = format!("{}\n", events::to_json(e, &wall(e.ts_ns))).into();
    let mut f = feed.lock().expect("the feed lock is never poisoned");
    if f.backlog.len() == BACKLOG {
        f.backlog.pop_front();
    }
    f.backlog.push_back(line.clone());
    // No reader connected is fine.
    let _ = f.live.send(line);
}

/// Sends one reader the backlog, then every event, until it goes away.
async fn serve_reader(
    mut sock: UnixStream,
    backlog: Vec<Arc<str>>,
    mut live: broadcast::Receiver<Arc<str>>,
) {
    for line in backlog {
        if sock.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
    loop {
        let line = match live.recv().await {
            Ok(l) => l,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                log::warn!("an `inspector events` reader is too slow: {n} events skipped for it");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if sock.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_leaves_out() {
        let mut r = RateLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let got: Vec<bool> = (0..5).map(|_| r.allow(t0).0).collect();
        assert_eq!(got, [true, true, true, false, false]);
        assert_eq!(r.roll(t0 + Duration::from_secs(5)), None, "window not over");
        assert_eq!(r.roll(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(
            r.roll(t0 + Duration::from_secs(20)),
            None,
            "nothing suppressed"
        );
        let (ok, said) = r.allow(t0 + Duration::from_secs(21));
        assert!(ok);
        assert_eq!(said, None);
    }
}
