//! Resetting a TCP connection that cannot be written to.
//!
//! A WebSocket's frames go through actix's response body; when the peer stops reading,
//! every write (even a Close frame) waits forever, and actix has no write deadline for a
//! streaming body. So each accepted connection keeps a duplicate of its socket's file
//! descriptor in its connection data ([`ConnectionAbort::on_connect`]); a socket task
//! holds only a weak handle to it ([`AbortHandle`]). Shutting the socket down from the
//! side makes actix's pending write fail, so it drops the connection; the zero linger
//! makes the kernel reset it instead of keeping the unsent data.
//!
//! Each connection thus uses two file descriptors: size `ulimit -n` for twice the
//! connections a gateway should hold.
//!
//! The duplicate lives exactly as long as actix's connection (the connection data is
//! dropped with it), so an abort never touches a socket that was already closed, and a
//! closed connection is never kept open by its duplicate.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long after a normal close a connection actix still holds is reset anyway
/// (actix may be stuck flushing the last frames to a peer that stopped reading).
const LINGER_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Bytes queued on the socket that the peer has not acknowledged yet (`SIOCOUTQ`).
#[allow(unsafe_code)] // no safe wrapper for this ioctl in std or socket2
fn unsent_bytes(fd: &OwnedFd) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int; `fd` is an open socket we own.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
    (result == 0).then_some(unsent.max(0) as usize)
}

/// The connection data that owns the duplicate descriptor.
#[derive(Debug)]
pub struct ConnectionAbort(Arc<OwnedFd>);

impl ConnectionAbort {
    /// For actix's `on_connect`: stores the duplicate in the connection's data.
    pub fn on_connect(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else { return };
        match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => {
                data.insert(ConnectionAbort(Arc::new(fd)));
            }
            Err(error) => tracing::warn!(%error, "no abort handle for a connection (descriptor limit?)"),
        }
    }

    /// A handle that does not keep the connection's socket open.
    pub fn downgrade(&self) -> AbortHandle {
        AbortHandle(Arc::downgrade(&self.0))
    }
}

/// Resets its connection on demand, if the connection still exists.
#[derive(Clone, Debug, Default)]
pub struct AbortHandle(Weak<OwnedFd>);

impl AbortHandle {
    /// Resets the connection now: whatever is queued for the peer is dropped.
    pub fn abort(&self) {
        let Some(fd) = self.0.upgrade() else { return };
        let socket = socket2::SockRef::from(&*fd);
        if let Err(error) = socket.set_linger(Some(Duration::ZERO)) {
            tracing::debug!(%error, "set_linger on abort");
        }
        if let Err(error) = socket.shutdown(std::net::Shutdown::Both) {
            // The peer already closed it; actix drops it on its next poll.
            tracing::debug!(%error, "shutdown on abort");
        }
    }

    /// Ends the connection gracefully once the closing handshake is done: FIN after
    /// whatever actix wrote. (RFC 6455 §7.1.1: the server closes the TCP connection
    /// first; actix would otherwise wait for the client to do it.) Waits, up to `within`,
    /// until the kernel has sent everything queued on the socket — actix writes until
    /// the socket is full, so an empty send queue means our Close is out — and resets
    /// the connection if that does not happen in time.
    pub async fn finish(&self, within: Duration) {
        let started = std::time::Instant::now();
        loop {
            let Some(fd) = self.0.upgrade() else { return };
            if unsent_bytes(&fd).is_none_or(|unsent| unsent == 0) {
                if let Err(error) = socket2::SockRef::from(&*fd).shutdown(std::net::Shutdown::Write) {
                    tracing::debug!(%error, "shutdown after the closing handshake");
                }
                drop(fd);
                return self.abort_later();
            }
            drop(fd);
            if started.elapsed() >= within {
                return self.abort();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resets the connection shortly, unless actix has let go of it by then.
    pub fn abort_later(&self) {
        if self.0.strong_count() == 0 {
            return;
        }
        let handle = self.clone();
        actix_web::rt::spawn(async move {
            tokio::time::sleep(LINGER_AFTER_CLOSE).await;
            handle.abort();
        });
    }
}
