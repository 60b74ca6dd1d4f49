//! Telling systemd how the service is doing (`sd_notify(3)`), when it asks
//! (`NOTIFY_SOCKET`, set for a `Type=notify` unit): `READY=1` once oauthd listens, so that
//! units ordered after it (an app: `After=oauthd.service`) start when it answers, not when
//! its process began; `STOPPING=1` when a stop begins, with `EXTEND_TIMEOUT_USEC` the
//! longest the stop may take (systemd kills a stop only past both that and the unit's
//! `TimeoutStopSec`).

use std::ffi::OsStr;

/// Sends `state` to systemd's socket, if there is one. A failure is said in the log and
/// changes nothing else (systemd then times the start out, and says so).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        log::warn!("telling systemd {state} (NOTIFY_SOCKET) failed: {e}");
    }
}

fn send(socket: &OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sender = UnixDatagram::unbound()?;
    // `@name`: a socket in the abstract namespace; else an absolute path (what systemd
    // sets; a relative one is refused, as libsystemd does).
    if !socket.as_bytes().starts_with(b"@") && !socket.as_bytes().starts_with(b"/") {
        return Err(std::io::Error::other("neither an absolute path nor @name"));
    }
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let to = SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &to)?;
        }
        None => {
            sender.send_to(state.as_bytes(), std::path::Path::new(socket))?;
        }
    }
    Ok(())
}
