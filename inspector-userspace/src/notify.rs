//! systemd's readiness protocol (sd_notify), for `Type=notify`: one
//! datagram with `READY=1` once `attach` is attached, `STOPPING=1` when it
//! begins to stop. Written here rather than taken from a crate: the whole
//! protocol is one datagram to the unix socket named by $NOTIFY_SOCKET (a
//! path, or an abstract name after `@`), a dozen lines with std alone.

use std::os::unix::{ffi::OsStrExt, net::UnixDatagram};

use anyhow::{Context, Result};

/// Sends `state` to the service manager; `Ok(false)` when not run by one.
pub fn notify(state: &str) -> Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound().context("opening a socket for sd_notify")?;
    let name = target.as_bytes();
    let sent = match name.strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                .context("NOTIFY_SOCKET is not a valid abstract socket name")?;
            sock.send_to_addr(state.as_bytes(), &addr)
        }
        None => sock.send_to(state.as_bytes(), &target),
    };
    sent.with_context(|| {
        format!(
            "notifying the service manager at {}",
            target.to_string_lossy()
        )
    })?;
    Ok(true)
}
