//! Child processes for tests: output captured while they run, every wait
//! bounded, and no child left behind.
//!
//! Each child gets `PR_SET_PDEATHSIG = SIGTERM`: if the test process dies
//! (killed, or aborted), its children are told to stop too. `inspector
//! attach` then detaches and removes its pins by itself.

use rustix::process::{Pid, Signal};
use std::{
    io::Read,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

/// Default bound for a command that should finish promptly.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the last output after a process exited (its pipes
/// may still be open in a grandchild).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_eof: bool,
    stderr_eof: bool,
}

#[derive(Default)]
struct Shared {
    captured: Mutex<Captured>,
    changed: Condvar,
}

/// Why [`Proc::wait_stderr`] stopped waiting without a match.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// stderr was closed (the process exited) before the condition held.
    Eof,
    /// The deadline passed.
    Timeout,
}

/// A running child process.
pub struct Proc {
    what: String,
    pid: i32,
    shared: Arc<Shared>,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

/// A finished process: status and everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Finished {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics, showing the output, unless the process exited with status 0.
    pub fn assert_success(&self) -> &Self {
        if !self.status.success() {
            panic!("{self}");
        }
        self
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            String::from_utf8_lossy(&self.stdout).trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A short printable form of a command line.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.len() > 80 {
            s.push_str(&format!(
                "{}...({} bytes)",
                a.chars().take(40).collect::<String>(),
                a.len()
            ));
        } else {
            s.push_str(&a);
        }
    }
    s
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null and stdout/stderr captured.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let what = describe(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure makes one system call (prctl, which is
        // async-signal-safe) and allocates nothing; nothing else runs in the
        // child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{what}`: {e}"));
        let pid = child.id() as i32;
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_reader(stdout, shared.clone(), false);
        spawn_reader(stderr, shared.clone(), true);
        let (tx, exited) = mpsc::channel();
        thread::spawn(move || {
            let status = child.wait().expect("waiting for a child");
            let _ = tx.send(status);
        });
        Proc {
            what,
            pid,
            shared,
            exited,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let c = self.shared.captured.lock().unwrap();
        String::from_utf8_lossy(&c.stderr).into_owned()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.shared.captured.lock().unwrap().stdout.clone()
    }

    /// Waits until `cond` holds for stderr so far, stderr is closed, or
    /// `timeout` passes.
    pub fn wait_stderr(
        &self,
        timeout: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut c = self.shared.captured.lock().unwrap();
        loop {
            if cond(&String::from_utf8_lossy(&c.stderr)) {
                return Ok(());
            }
            if c.stderr_eof {
                return Err(WaitError::Eof);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitError::Timeout);
            }
            c = self.shared.changed.wait_timeout(c, left).unwrap().0;
        }
    }

    /// Sends `signal` (a signal number, as `ExitStatus::signal` reports
    /// them) unless the process has already been reaped.
    pub fn signal(&mut self, signal: i32) {
        let sig = Signal::from_named_raw(signal)
            .unwrap_or_else(|| panic!("{signal} is not a signal number"));
        if self.try_status().is_none() {
            // The waiter thread has not reaped it, so the pid is still ours.
            // An error can only mean it exited just now: nothing to do.
            let _ = rustix::process::kill_process(pid_of(self.pid), sig);
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.try_recv().ok();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(timeout).ok();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit; kills it and panics if
    /// it does not. Returns the status and all output.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        if self.wait_timeout(timeout).is_none() {
            self.kill();
            let out = self.collect();
            panic!(
                "`{}` did not finish within {timeout:?}; killed it.\n{out}",
                out.what
            );
        }
        self.collect()
    }

    /// Asks the process to stop (SIGTERM), waits up to `timeout`, then
    /// kills it; returns whether it stopped when asked.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.signal(Signal::TERM.as_raw());
        if self.wait_timeout(timeout).is_some() {
            return true;
        }
        self.kill();
        false
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::KILL.as_raw());
        if self.wait_timeout(Duration::from_secs(10)).is_none() {
            eprintln!(
                "warning: `{}` (pid {}) survived SIGKILL for 10 s",
                self.what, self.pid
            );
        }
    }

    /// Status and output of an exited process (waits briefly for the pipes
    /// to close).
    fn collect(&mut self) -> Finished {
        let status = self
            .try_status()
            .unwrap_or_else(|| ExitStatus::from_raw(-1));
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut c = self.shared.captured.lock().unwrap();
        while !(c.stdout_eof && c.stderr_eof) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            c = self.shared.changed.wait_timeout(c, left).unwrap().0;
        }
        Finished {
            what: self.what.clone(),
            status,
            stdout: c.stdout.clone(),
            stderr: String::from_utf8_lossy(&c.stderr).into_owned(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.kill();
        }
    }
}

fn spawn_reader(mut pipe: impl Read + Send + 'static, shared: Arc<Shared>, is_stderr: bool) {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = pipe.read(&mut buf).unwrap_or(0);
            let mut c = shared.captured.lock().unwrap();
            if n == 0 {
                if is_stderr {
                    c.stderr_eof = true;
                } else {
                    c.stdout_eof = true;
                }
            } else if is_stderr {
                c.stderr.extend_from_slice(&buf[..n]);
            } else {
                c.stdout.extend_from_slice(&buf[..n]);
            }
            drop(c);
            shared.changed.notify_all();
            if n == 0 {
                return;
            }
        }
    });
}

/// Runs `cmd` to completion (at most `timeout`), returning status and output.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Finished {
    Proc::spawn(cmd).finish(timeout)
}

/// Runs `cmd` to completion within [`DEFAULT_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Finished {
    run_timeout(cmd, DEFAULT_TIMEOUT)
}

/// Runs `cmd` and panics, showing its output, unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Finished {
    let out = run(cmd);
    out.assert_success();
    out
}

/// A process id as rustix takes it; panics on 0 or a negative id.
pub fn pid_of(pid: i32) -> Pid {
    Pid::from_raw(pid).unwrap_or_else(|| panic!("{pid} is not a process id"))
}

/// Builds a [`Command`] from a program and its arguments.
pub fn cmd<S: AsRef<std::ffi::OsStr>>(program: impl AsRef<std::ffi::OsStr>, args: &[S]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}
