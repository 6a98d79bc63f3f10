//! A real Postfix instance in a namespace: its own configuration folder
//! (main.cf and master.cf written here), queue, data and mail folders
//! under a temporary folder, listening on the given addresses only,
//! delivering mail for `example.com` into one Maildir, and sending nothing
//! anywhere else. Started with `postfix -c DIR start` (Postfix runs its own
//! master), stopped with `postfix -c DIR stop` on drop.
//!
//! Debian's layout: programs in /usr/lib/postfix/sbin, commands in
//! /usr/sbin, `postfix-files` (used to create the queue folders) in
//! /etc/postfix. Chroot is off for every service, so no copies of system
//! files are needed.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::process::Signal;

use crate::{
    netns::NetNs,
    proc::{cmd, run, run_timeout, Finished},
    wait_until,
};

/// The domain Postfix accepts mail for.
pub const DOMAIN: &str = "example.com";

/// Bound for Postfix to start, deliver, stop.
pub const TIMEOUT: Duration = Duration::from_secs(30);

const MASTER_CF: &str = "\
smtp      inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// A delivered message.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub path: PathBuf,
    /// The whole file as the virtual agent wrote it (LF line ends, with
    /// Return-Path, Delivered-To and Received added).
    pub raw: Vec<u8>,
}

impl Delivered {
    /// What follows the first empty line.
    pub fn body(&self) -> &[u8] {
        match self.raw.windows(2).position(|w| w == b"\n\n") {
            Some(i) => &self.raw[i + 2..],
            None => &[],
        }
    }

    /// The value of the first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.raw);
        let prefix = format!("{}:", name.to_ascii_lowercase());
        text.lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    }
}

/// A running Postfix; stopped (and its folders removed) on drop.
pub struct Postfix {
    dir: tempfile::TempDir,
    ns_path: PathBuf,
    ns_name: String,
    running: bool,
    /// Sessions of the start-up probes, not the tests'.
    probes: usize,
}

impl Postfix {
    /// Writes a configuration for an instance listening on port 25 of
    /// `addrs` in `ns`, starts it and waits until it answers.
    pub fn start(ns: &NetNs, addrs: &[IpAddr]) -> Postfix {
        Self::start_with(ns, addrs, &[])
    }

    /// As [`Postfix::start`], with extra `main.cf` lines.
    pub fn start_with(ns: &NetNs, addrs: &[IpAddr], extra: &[&str]) -> Postfix {
        crate::require_root();
        crate::remove_stale_once();
        let dir = crate::temp_dir("postfix");
        // The daemons run as postfix and must reach their folders.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 755");
        let d = dir.path();
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir(d.join(sub)).expect("creating a Postfix folder");
        }
        let (uid, gid) = postfix_ids();
        for sub in ["data", "mail"] {
            std::os::unix::fs::chown(d.join(sub), Some(uid), Some(gid)).expect("chown to postfix");
        }
        let listen: Vec<String> = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            })
            .collect();
        let mut main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {q}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = server.test
mydomain = test
myorigin = server.test
mydestination =
inet_interfaces = {listen}
inet_protocols = all
# Only the server itself may relay: the client is an outsider.
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Nothing leaves the test bed: no DNS, no outbound SMTP.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
default_transport = error:5.7.1 no outbound mail from the test bed
relay_transport = error:5.7.1 no outbound mail from the test bed
# Every recipient of {domain} into one Maildir.
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
# Masked commands are errors: no penalty delays, no disconnects.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 1000
maillog_file_prefixes = {d}
maillog_file = {log}
alias_maps =
alias_database =
biff = no
",
            q = d.join("queue").display(),
            data = d.join("data").display(),
            mail = d.join("mail").display(),
            listen = listen.join(", "),
            domain = DOMAIN,
            d = d.display(),
            log = d.join("maillog").display(),
        );
        for l in extra {
            main_cf.push_str(l);
            main_cf.push('\n');
        }
        std::fs::write(d.join("conf/main.cf"), main_cf).expect("writing main.cf");
        std::fs::write(d.join("conf/master.cf"), MASTER_CF).expect("writing master.cf");

        let mut pf = Postfix {
            dir,
            ns_path: ns.path(),
            ns_name: ns.name().to_string(),
            running: false,
            probes: 0,
        };
        let out = pf.postfix("start");
        if !out.status.success() {
            panic!(
                "postfix start failed: {out}\n--- maillog ---\n{}",
                pf.maillog()
            );
        }
        pf.running = true;
        // `postfix start` returns once master is initialised; wait until
        // smtpd answers on every address, from inside the namespace.
        for a in addrs {
            pf.wait_greeting(ns, *a);
        }
        // The probes' own sessions, once smtpd has logged their end, are
        // not counted by [`Postfix::disconnect_lines`].
        let probes = pf.probes;
        wait_until("Postfix to log the probe sessions", TIMEOUT, || {
            (pf.all_disconnect_lines().len() >= probes).then_some(())
        });
        pf
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    /// Runs `postfix -c CONF action` inside the namespace.
    fn postfix(&self, action: &str) -> Finished {
        let mut c = cmd(
            "nsenter",
            &[&format!("--net={}", self.ns_path.display()), "--"],
        );
        c.arg("postfix").arg("-c").arg(self.conf()).arg(action);
        run_timeout(&mut c, TIMEOUT)
    }

    fn wait_greeting(&mut self, ns: &NetNs, addr: IpAddr) {
        let script = "import socket, sys\n\
            s = socket.create_connection((sys.argv[1], 25), timeout=5)\n\
            print(s.makefile('rb').readline().decode('latin-1').strip())\n\
            s.sendall(b'QUIT\\r\\n')\n";
        let what = format!("Postfix to answer on {addr} in {}", self.ns_name);
        wait_until(&what, TIMEOUT, || {
            let mut c = ns.exec(crate::smtpd::PYTHON);
            c.args(["-c", script, &addr.to_string()]);
            let out = run(&mut c);
            (out.status.success() && out.stdout_str().starts_with("220 ")).then_some(())
        });
        self.probes += 1;
    }

    /// The instance's log so far.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// The `disconnect from ...` lines smtpd logs at the end of each
    /// session, with its per-command statistics (`unknown=0/3` counts
    /// commands it did not recognise).
    pub fn disconnect_lines(&self) -> Vec<String> {
        self.all_disconnect_lines().split_off(self.probes)
    }

    fn all_disconnect_lines(&self) -> Vec<String> {
        self.maillog()
            .lines()
            .filter(|l| l.contains("postfix/smtpd") && l.contains(": disconnect from "))
            .map(String::from)
            .collect()
    }

    /// Waits until `n` sessions have ended, and returns their disconnect
    /// lines.
    pub fn wait_disconnects(&self, n: usize) -> Vec<String> {
        wait_until(&format!("{n} Postfix sessions to end"), TIMEOUT, || {
            let l = self.disconnect_lines();
            (l.len() >= n).then_some(l)
        })
    }

    /// Messages delivered so far, oldest first.
    pub fn delivered(&self) -> Vec<Delivered> {
        let new = self.dir.path().join("mail/inbox/new");
        let mut v: Vec<Delivered> = std::fs::read_dir(&new)
            .map(|rd| {
                rd.flatten()
                    .map(|e| Delivered {
                        path: e.path(),
                        raw: std::fs::read(e.path()).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Maildir names start with the delivery time in seconds, then a
        // unique part; the log order is the better order, but time is
        // enough for tests that wait for each message.
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Waits until `n` messages have been delivered.
    pub fn wait_delivered(&self, n: usize) -> Vec<Delivered> {
        let what = format!("{n} messages delivered by Postfix");
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let d = self.delivered();
            if d.len() >= n {
                return d;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} ({} so far)\n--- maillog ---\n{}",
                    d.len(),
                    self.maillog()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the instance: `postfix stop`, then checks that its master is
    /// gone.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = self.master_pid();
        let out = self.postfix("stop");
        if !out.status.success() {
            eprintln!("warning: postfix stop failed: {out}");
        }
        if let Some(pid) = pid {
            if !wait_gone(pid, TIMEOUT) {
                eprintln!("warning: Postfix master {pid} survived `postfix stop`; killing it");
                kill_master(pid);
            }
        }
    }

    fn master_pid(&self) -> Option<i32> {
        master_pid_in(self.dir.path())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postfix_ids() -> (u32, u32) {
    let out = run(&mut cmd("id", &["-u", "postfix"]));
    let uid = out.stdout_str().trim().parse().expect("a postfix user");
    let out = run(&mut cmd("id", &["-g", "postfix"]));
    let gid = out.stdout_str().trim().parse().expect("a postfix group");
    (uid, gid)
}

/// The pid in `DIR/queue/pid/master.pid`, if it is a live Postfix master.
pub fn master_pid_in(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("queue/pid/master.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    exe.ends_with("master").then_some(pid)
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// SIGKILL to a master and its process group (its children).
pub fn kill_master(pid: i32) {
    // Either may already be gone: nothing to report then.
    let pid = crate::proc::pid_of(pid);
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    let _ = rustix::process::kill_process(pid, Signal::KILL);
}
