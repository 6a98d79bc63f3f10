//! The scripted SMTP client (`testkit/py/smtp_client.py`): exact bytes, exact
//! segmentation (one send, one byte per segment, or given sizes), replies
//! read after each step, and hand-shakes with the test through files, run
//! inside the client namespace.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::{
    netns::{in_netns, NetNs},
    proc::{Finished, Proc},
    smtpd::PYTHON,
};

/// Bound for a whole scripted session.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(90);

/// How long `swaks` runs at most.
pub const SWAKS_TIMEOUT: Duration = Duration::from_secs(60);

/// `swaks` in `ns`: a mail to `server` port 25 from `from` to `to`, HELO
/// `client.test`, 30 s per wait. The caller adds the rest (body, AUTH,
/// pipelining, ...) and runs it within [`SWAKS_TIMEOUT`].
pub fn swaks(ns: &NetNs, server: IpAddr, from: &str, to: &str) -> Command {
    let mut c = ns.exec("swaks");
    c.args(["--server", &server.to_string(), "--port", "25"])
        .args(["--from", from, "--to", to, "--helo", "client.test"])
        .args(["--timeout", "30"]);
    c
}

/// Path of the client script.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/smtp_client.py")
}

/// How the bytes of one step are cut into TCP segments.
#[derive(Clone, Debug)]
pub enum Split {
    /// One `send()`.
    Whole,
    /// One byte per segment (each acknowledged before the next is sent).
    Bytes,
    /// Segments of these sizes, the rest in a last one.
    Sizes(Vec<usize>),
}

/// What the client does, step by step.
#[derive(Clone, Debug, Default)]
pub struct Script {
    steps: Vec<Value>,
    /// Bound for each wait of the client (default 30 s).
    timeout: Option<Duration>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    /// Sends `data` in one `send()`, then reads `replies` replies.
    pub fn send(self, data: &[u8], replies: usize) -> Script {
        self.send_split(data, Split::Whole, replies)
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(self, line: &str) -> Script {
        self.send(line.as_bytes(), 1)
    }

    pub fn send_split(mut self, data: &[u8], split: Split, replies: usize) -> Script {
        let split = match split {
            Split::Whole => json!("whole"),
            Split::Bytes => json!("bytes"),
            Split::Sizes(v) => json!(v),
        };
        self.steps
            .push(json!({"send": hex(data), "split": split, "replies": replies}));
        self
    }

    /// Creates `path` when the client gets to this step.
    pub fn touch(mut self, path: &Path) -> Script {
        self.steps.push(json!({"touch": path.to_string_lossy()}));
        self
    }

    /// Waits until `path` exists before going on.
    pub fn wait_file(mut self, path: &Path) -> Script {
        self.steps
            .push(json!({"wait_file": path.to_string_lossy()}));
        self
    }

    /// Half-closes and reads what the server still sends.
    pub fn close(mut self) -> Script {
        self.steps.push(json!({"close": true}));
        self
    }

    /// Bounds every wait of the client (a reply, an acknowledgement).
    pub fn timeout(mut self, t: Duration) -> Script {
        self.timeout = Some(t);
        self
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// What the client saw.
#[derive(Clone, Debug)]
pub struct Transcript {
    /// The client's own address and port.
    pub local: SocketAddr,
    pub greeting: String,
    /// Replies read at each step, in step order.
    pub steps: Vec<Vec<String>>,
    pub error: Option<String>,
    pub raw: String,
}

impl Transcript {
    /// Every reply, in order.
    pub fn replies(&self) -> Vec<&str> {
        self.steps.iter().flatten().map(|s| s.as_str()).collect()
    }

    /// The replies of step `i`.
    pub fn step(&self, i: usize) -> &[String] {
        self.steps
            .get(i)
            .map(|v| v.as_slice())
            .unwrap_or_else(|| panic!("no step {i} in the transcript: {}", self.raw))
    }

    /// The one reply of step `i`.
    pub fn reply(&self, i: usize) -> &str {
        let r = self.step(i);
        assert_eq!(r.len(), 1, "step {i} has {} replies: {r:?}", r.len());
        &r[0]
    }

    /// The reply code of the one reply of step `i`.
    pub fn code(&self, i: usize) -> u16 {
        code_of(self.reply(i))
    }
}

/// The code of a reply text.
pub fn code_of(reply: &str) -> u16 {
    reply
        .get(..3)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an SMTP reply: {reply:?}"))
}

/// A plain SMTP connection over a TCP socket, driven one command at a time
/// by the caller (for exact control, and for the benchmark's latency
/// probe). The `try_` methods return errors; the others panic with the
/// context a test needs.
pub struct Smtp {
    r: BufReader<TcpStream>,
    /// The client's address and port (to find the connection in the
    /// server's record).
    pub local: SocketAddr,
    /// The server's greeting (code 220).
    pub greeting: String,
}

/// Bound for one step of an [`Smtp`] connection made by [`Smtp::connect`].
pub const SMTP_STEP_TIMEOUT: Duration = Duration::from_secs(30);

impl Smtp {
    /// Connects to `to` from this thread's namespace (see
    /// [`crate::netns::in_netns`]), with `timeout` for the connection and
    /// each read and write, and reads the greeting, which must be 220.
    pub fn try_connect(to: SocketAddr, timeout: Duration) -> anyhow::Result<Smtp> {
        let stream = TcpStream::connect_timeout(&to, timeout)
            .with_context(|| format!("connecting to {to}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut s = Smtp {
            local: stream.local_addr()?,
            r: BufReader::new(stream),
            greeting: String::new(),
        };
        s.greeting = s.try_reply()?;
        ensure!(s.greeting.starts_with("220"), "greeting: {}", s.greeting);
        Ok(s)
    }

    /// Connects from `ns` to `server:port` (the socket is made in `ns`,
    /// used from here) and reads the greeting; panics on failure.
    pub fn connect(ns: &NetNs, server: IpAddr, port: u16) -> Smtp {
        let to = SocketAddr::new(server, port);
        in_netns(ns, move || Smtp::try_connect(to, SMTP_STEP_TIMEOUT))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Sends `data` as it is.
    pub fn try_send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.r
            .get_mut()
            .write_all(data)
            .with_context(|| format!("sending {:?}", String::from_utf8_lossy(data)))
    }

    pub fn send(&mut self, data: &[u8]) {
        self.try_send(data).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Reads one complete reply (all lines of a multi-line reply).
    pub fn try_reply(&mut self) -> anyhow::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .r
                .read_line(&mut line)
                .with_context(|| format!("reading a reply (got {all:?})"))?;
            ensure!(
                n > 0,
                "connection closed while reading a reply (got {all:?})"
            );
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all);
            }
        }
    }

    pub fn reply(&mut self) -> String {
        self.try_reply().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Sends `data` and reads the reply, which must have `code`.
    pub fn try_expect_raw(&mut self, data: &[u8], code: u16) -> anyhow::Result<String> {
        self.try_send(data)?;
        let r = self.try_reply()?;
        ensure!(
            r.get(..3) == Some(code.to_string().as_str()),
            "reply to {:?}: expected {code}, got {r}",
            String::from_utf8_lossy(data)
        );
        Ok(r)
    }

    /// Sends `line` (CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends `line` (CRLF added) and checks the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> String {
        self.try_expect_raw(format!("{line}\r\n").as_bytes(), code)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// A client session running in the background (for tests that act while
/// it waits on a file).
pub struct Running {
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Waits for the session to end and returns what it saw; panics if it
    /// failed.
    pub fn finish(self) -> Transcript {
        let out = self.proc.finish(SESSION_TIMEOUT);
        parse(&out)
    }

    /// Waits for the session to end; `Err` (with everything the client
    /// printed) if it failed.
    pub fn finish_raw(self) -> Result<Transcript, String> {
        let out = self.proc.finish(SESSION_TIMEOUT);
        let text = out.stdout_str();
        let failed = !out.status.success()
            || serde_json::from_str::<Value>(text.trim())
                .map(|v| !v["error"].is_null())
                .unwrap_or(true);
        if failed {
            Err(out.to_string())
        } else {
            Ok(parse(&out))
        }
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// A folder for hand-shake files, readable from every namespace.
pub fn handshake_dir() -> tempfile::TempDir {
    crate::remove_stale_once();
    crate::temp_dir("client")
}

/// Starts `script` against `server:port` from namespace `ns`.
pub fn spawn(ns: &NetNs, server: IpAddr, port: u16, script: &Script) -> Running {
    let dir = handshake_dir();
    let file = dir.path().join("script.json");
    std::fs::write(&file, Value::Array(script.steps.clone()).to_string())
        .expect("writing the client script");
    let mut c = ns.exec(PYTHON);
    c.arg(script_path())
        .args(["--server", &server.to_string(), "--port", &port.to_string()])
        .arg("--script")
        .arg(&file);
    if let Some(t) = script.timeout {
        c.arg("--timeout").arg(t.as_secs_f64().to_string());
    }
    Running {
        proc: Proc::spawn(&mut c),
        _dir: dir,
    }
}

/// Runs `script` against `server:port` from namespace `ns` and returns
/// what the client saw; panics (showing everything) if the session failed.
pub fn run(ns: &NetNs, server: IpAddr, port: u16, script: &Script) -> Transcript {
    spawn(ns, server, port, script).finish()
}

fn parse(out: &Finished) -> Transcript {
    let text = out.stdout_str();
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("the SMTP client printed no JSON ({e}):\n{out}"));
    let error = v["error"].as_str().map(String::from);
    if !out.status.success() || error.is_some() {
        panic!(
            "the SMTP client failed: {}\n{out}",
            error.unwrap_or_default()
        );
    }
    let local = match v["local"].as_array() {
        Some(a) if a.len() == 2 => {
            let ip: IpAddr = a[0]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad local address in {text}"));
            SocketAddr::new(ip, a[1].as_u64().unwrap_or_default() as u16)
        }
        _ => panic!("no local address in {text}"),
    };
    let steps = v["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    s["replies"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .map(|x| x.as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    Transcript {
        local,
        greeting: v["greeting"].as_str().unwrap_or_default().to_string(),
        steps,
        error,
        raw: text,
    }
}
