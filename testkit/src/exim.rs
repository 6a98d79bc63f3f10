//! Exim 4 as a sending MTA in a namespace: Debian's `exim4-daemon-light`
//! unpacked (not installed: it would replace Postfix) by `cargo xtask
//! setup` into `<target>/exim`, run with a configuration of its own
//! (`-C`) that routes every message to one server and uses whatever that
//! server offers (CHUNKING, STARTTLS, PIPELINING), as Debian's default
//! MTA does.
//!
//! Exim refuses to run without its compiled-in user `Debian-exim`, which
//! only exists where the package is installed: each run binds a copy of
//! `/etc/passwd` and `/etc/group` with that user added over the real ones,
//! in a mount namespace of its own (`unshare -m`), where the one library
//! it needs that the system lacks is overlaid on the system's library
//! folder; the host is left as it was.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    netns::NetNs,
    proc::{run_timeout, Finished},
    target_dir, unique_id,
};

/// The uid and gid `Debian-exim` gets in the bound passwd and group files
/// (Exim refuses to run its deliveries as root).
const EXIM_ID: u32 = 64010;

/// Where the library Exim needs and the system lacks (libidn12) is
/// overlaid, in the run's own mount namespace.
const SYSTEM_LIBS: &str = "/usr/lib/x86_64-linux-gnu";

/// Bound for one `exim -odf` run (a delivery in the foreground).
pub const EXIM_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `cargo xtask setup` unpacks the package: `$INSPECTOR_EXIM_ROOT`,
/// else `<target>/exim`.
pub fn root() -> PathBuf {
    std::env::var_os("INSPECTOR_EXIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("exim"))
}

/// One Exim instance: its configuration, spool and logs in a temporary
/// folder, removed on drop.
pub struct Exim {
    dir: tempfile::TempDir,
}

impl Exim {
    /// An Exim that sends every message to `server` port 25.
    pub fn new(server: IpAddr) -> Exim {
        crate::require_root();
        let bin = root().join("usr/sbin/exim4");
        assert!(
            bin.exists(),
            "{} is missing: `cargo xtask setup` unpacks Debian's exim4-daemon-light there",
            bin.display()
        );
        let dir = crate::temp_dir("exim");
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod 755");
        for sub in ["spool", "log"] {
            std::fs::create_dir(d.join(sub)).expect("creating an Exim folder");
            std::os::unix::fs::chown(d.join(sub), Some(EXIM_ID), Some(EXIM_ID))
                .expect("chown to Debian-exim");
        }
        for (file, line) in [
            (
                "passwd",
                format!("Debian-exim:x:{EXIM_ID}:{EXIM_ID}::/nonexistent:/usr/sbin/nologin\n"),
            ),
            ("group", format!("Debian-exim:x:{EXIM_ID}:\n")),
        ] {
            let mut text = std::fs::read_to_string(Path::new("/etc").join(file))
                .expect("reading /etc/passwd or /etc/group");
            text.push_str(&line);
            std::fs::write(d.join(file), text).expect("writing a passwd or group copy");
        }
        // In a host list of `route_list` (itself a list separated by `;`)
        // the colons of an IPv6 address are doubled.
        let host = server.to_string().replace(':', "::");
        let conf = format!(
            "# It re-executes itself for deliveries: from here.
exim_path = {bin}
keep_environment =
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
primary_hostname = client.test
# Never wait for DNS in the test bed.
host_lookup =
rfc1413_hosts =

begin routers
to_server:
  driver = manualroute
  route_list = * {host}
  transport = to_server

begin transports
to_server:
  driver = smtp
  # Exim's defaults, said out loud: CHUNKING whenever offered, STARTTLS
  # whenever offered (any certificate).
  hosts_try_chunking = *
  tls_verify_certificates =
  hosts_try_fastopen =

begin retry
* * F,1m,1m
",
            d = d.display(),
            bin = bin.display(),
        );
        std::fs::write(d.join("exim.conf"), conf).expect("writing exim.conf");
        Exim { dir }
    }

    /// Submits `message` (headers and body, LF line ends) from `from` to
    /// `to` and delivers it in the foreground (`-odf`), from namespace
    /// `ns`.
    pub fn send(&self, ns: &NetNs, from: &str, to: &str, message: &str) -> Finished {
        let d = self.dir.path();
        let msg = d.join(format!("message-{}", unique_id()));
        std::fs::write(&msg, message).expect("writing the message");
        let lib = root().join("usr/lib/x86_64-linux-gnu");
        // The library joins the system's in a read-only overlay: Exim
        // re-executes itself with privileges changed, when the loader
        // ignores LD_LIBRARY_PATH.
        let script = format!(
            "mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group && \
             mount -t overlay overlay -o lowerdir={lib}:{sys} {sys} && \
             exec {bin} -C {d}/exim.conf -odf -oi -f {from} {to} < {msg}",
            d = d.display(),
            lib = lib.display(),
            sys = SYSTEM_LIBS,
            bin = root().join("usr/sbin/exim4").display(),
            msg = msg.display(),
        );
        let mut c = ns.exec("unshare");
        c.args(["-m", "sh", "-c", &script]);
        run_timeout(&mut c, EXIM_TIMEOUT)
    }

    /// Exim's main log: `=>` a delivery, `**` a failure, `==` a deferral.
    pub fn mainlog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/mainlog")).unwrap_or_default()
    }
}
