//! Resetting a TCP connection that cannot be written to.
//!
//! A WebSocket's frames go through actix's response body; when the peer stops reading,
//! every write (even a Close frame) waits forever, and actix has no write deadline for a
//! streaming body. So each accepted connection records its socket in its connection data
//! ([`ConnectionAbort::on_connect`]): the descriptor number and the two addresses of the
//! connection. A socket task holds only a weak handle to it ([`AbortHandle`]). Shutting
//! the socket down from the side makes actix's pending write fail, so it drops the
//! connection; the zero linger makes the kernel reset it instead of keeping the unsent
//! data.
//!
//! The descriptor is actix's own, not a duplicate, so a connection costs one descriptor
//! (a duplicate halved the sockets a gateway could hold under its open-file limit). The
//! number stays valid while actix holds the connection; after actix has closed it, the
//! number may be reused by another socket, so every use first checks that the socket
//! behind the number still has this connection's local and peer addresses (no two live
//! TCP connections share both). Handles are used on the worker thread that owns the
//! connection, so actix cannot close it between that check and the call that follows.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long after a normal close a connection actix still holds is reset anyway
/// (actix may be stuck flushing the last frames to a peer that stopped reading).
const LINGER_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Bytes queued on the socket that the peer has not acknowledged yet (`SIOCOUTQ`).
#[allow(unsafe_code)] // no safe wrapper for this ioctl in std or socket2
fn unsent_bytes(socket: &socket2::SockRef<'_>) -> Option<usize> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int into `unsent`; the descriptor is an
    // open socket (checked by `ConnectionSocket::with`).
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
    (result == 0).then_some(unsent.max(0) as usize)
}

/// An accepted connection's socket: the descriptor actix owns, and the addresses that
/// tell it apart from a later socket given the same number.
#[derive(Debug)]
struct ConnectionSocket {
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

impl ConnectionSocket {
    /// Runs `action` on the socket if the descriptor is still this connection's.
    #[allow(unsafe_code)] // a descriptor number owned by actix, checked before each use
    fn with<R>(&self, action: impl FnOnce(&socket2::SockRef<'_>) -> R) -> Option<R> {
        // SAFETY: nothing here reads or writes memory through the descriptor; if actix
        // has closed it, the calls below fail (EBADF, ENOTSOCK) or find another socket's
        // addresses, and `action` does not run. The borrow ends with this call, on the
        // thread that owns the connection, so the descriptor cannot be closed during it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let socket = socket2::SockRef::from(&fd);
        let addresses = (socket.local_addr().ok()?.as_socket()?, socket.peer_addr().ok()?.as_socket()?);
        (addresses == (self.local, self.peer)).then(|| action(&socket))
    }
}

/// The connection data that records the connection's socket.
#[derive(Debug)]
pub struct ConnectionAbort(Arc<ConnectionSocket>);

impl ConnectionAbort {
    /// For actix's `on_connect`: records the socket in the connection's data.
    pub fn on_connect(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
        let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else { return };
        match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(peer)) => {
                data.insert(ConnectionAbort(Arc::new(ConnectionSocket { fd: stream.as_raw_fd(), local, peer })));
            }
            (Err(error), _) | (_, Err(error)) => tracing::warn!(%error, "no abort handle for a connection"),
        }
    }

    /// A handle that does not keep the connection's data alive.
    pub fn downgrade(&self) -> AbortHandle {
        AbortHandle(Arc::downgrade(&self.0))
    }
}

/// Resets its connection on demand, if the connection still exists.
#[derive(Clone, Debug, Default)]
pub struct AbortHandle(Weak<ConnectionSocket>);

impl AbortHandle {
    /// Resets the connection now: whatever is queued for the peer is dropped.
    pub fn abort(&self) {
        let Some(connection) = self.0.upgrade() else { return };
        connection.with(|socket| {
            if let Err(error) = socket.set_linger(Some(Duration::ZERO)) {
                tracing::debug!(%error, "set_linger on abort");
            }
            if let Err(error) = socket.shutdown(std::net::Shutdown::Both) {
                // The peer already closed it; actix drops it on its next poll.
                tracing::debug!(%error, "shutdown on abort");
            }
        });
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
            let Some(connection) = self.0.upgrade() else { return };
            // `None`: the socket is gone already; nothing is left to finish.
            let Some(sent) = connection.with(|socket| {
                let sent = unsent_bytes(socket).is_none_or(|unsent| unsent == 0);
                if sent {
                    if let Err(error) = socket.shutdown(std::net::Shutdown::Write) {
                        tracing::debug!(%error, "shutdown after the closing handshake");
                    }
                }
                sent
            }) else {
                return;
            };
            drop(connection);
            if sent {
                return self.abort_later();
            }
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
