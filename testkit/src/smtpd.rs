//! The recording SMTP server (`testkit/py/recording_smtpd.py`, on aiosmtpd):
//! runs in a namespace and writes down the exact bytes it received, so that
//! tests judge by what the server saw.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::{from_hex, netns::NetNs, proc::Proc, wait_until};

/// Bound for the server to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The Python interpreter that has Debian's aiosmtpd and scapy.
pub const PYTHON: &str = "/usr/bin/python3";

/// Path of the server script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/recording_smtpd.py")
}

/// One message as the server accepted it.
#[derive(Clone, Debug)]
pub struct Message {
    pub conn: u64,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// DATA content, dot-unstuffed, CRLF line ends as received.
    pub content: Vec<u8>,
}

impl Message {
    /// The body: what follows the first empty line (the end of the header).
    pub fn body(&self) -> &[u8] {
        match self.content.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => &self.content[i + 4..],
            None => &[],
        }
    }
}

/// A closed connection: every byte the server received on it, and every
/// byte it sent.
#[derive(Clone, Debug)]
pub struct Closed {
    pub conn: u64,
    pub received: Vec<u8>,
    pub sent: Vec<u8>,
}

/// A running recording server; killed on drop, with its files.
pub struct RecordingSmtpd {
    proc: Proc,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RecordingSmtpd {
    /// Starts the server in `ns`, listening on `port` of every address in
    /// `hosts`, and waits until it listens.
    pub fn start(ns: &NetNs, hosts: &[IpAddr], port: u16) -> RecordingSmtpd {
        Self::start_with(ns, hosts, port, &[])
    }

    /// As [`RecordingSmtpd::start`], with extra script options
    /// (`--smtputf8`, `--auth`, `--auth-user USER:PASSWORD`).
    pub fn start_with(ns: &NetNs, hosts: &[IpAddr], port: u16, extra: &[&str]) -> RecordingSmtpd {
        crate::remove_stale_once();
        let dir = crate::temp_dir("smtpd");
        let log = dir.path().join("received.jsonl");
        let ready = dir.path().join("ready.json");
        let mut c = ns.exec(PYTHON);
        c.arg(script());
        for h in hosts {
            c.arg("--host").arg(h.to_string());
        }
        c.args(["--port", &port.to_string()])
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .args(extra);
        let mut proc = Proc::spawn(&mut c);
        wait_until("the recording SMTP server to listen", START_TIMEOUT, || {
            if let Some(status) = proc.try_status() {
                panic!(
                    "the recording SMTP server exited with {status} before listening:\n{}",
                    proc.stderr()
                );
            }
            ready.exists().then_some(())
        });
        RecordingSmtpd {
            proc,
            log,
            _dir: dir,
        }
    }

    /// What the server logged on stderr (aiosmtpd warnings, tracebacks).
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Every record so far, in order.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            // A record is written with one write(): only a last line still
            // being written can be incomplete.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The raw bytes of every line read in the command phase, all
    /// connections, in order (CRLF included).
    pub fn command_lines(&self) -> Vec<Vec<u8>> {
        self.lines("command")
    }

    /// The raw bytes of every line read in `phase` ("command", "data" or
    /// "auth": the answers to AUTH challenges), all connections, in order.
    pub fn lines(&self, phase: &str) -> Vec<Vec<u8>> {
        self.records()
            .iter()
            .filter(|r| r["event"] == "line" && r["phase"] == phase)
            .map(|r| from_hex(r["hex"].as_str().unwrap_or_default()))
            .collect()
    }

    /// Every message accepted so far.
    pub fn messages(&self) -> Vec<Message> {
        self.records()
            .iter()
            .filter(|r| r["event"] == "message")
            .map(|r| Message {
                conn: r["conn"].as_u64().unwrap_or_default(),
                mail_from: r["mail_from"].as_str().unwrap_or_default().to_string(),
                rcpt_tos: r["rcpt_tos"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                content: from_hex(r["hex"].as_str().unwrap_or_default()),
            })
            .collect()
    }

    /// Waits until `n` connections have closed, and returns what each of
    /// them carried, in order of closing.
    pub fn wait_closed(&self, n: usize, timeout: Duration) -> Vec<Closed> {
        wait_until(&format!("{n} SMTP connections to close"), timeout, || {
            let closed: Vec<Closed> = self
                .records()
                .iter()
                .filter(|r| r["event"] == "close")
                .map(|r| Closed {
                    conn: r["conn"].as_u64().unwrap_or_default(),
                    received: from_hex(r["hex"].as_str().unwrap_or_default()),
                    sent: from_hex(r["sent_hex"].as_str().unwrap_or_default()),
                })
                .collect();
            (closed.len() >= n).then_some(closed)
        })
    }
}

impl Drop for RecordingSmtpd {
    fn drop(&mut self) {
        if !self.proc.terminate(Duration::from_secs(10)) {
            eprintln!("warning: the recording SMTP server ignored SIGTERM; killed it");
        }
    }
}
