//! The WebSocket transport every socket route shares: the upgrade with its frame limits,
//! what an incoming frame means, writes under a deadline, and the closing handshake
//! (RFC 6455 §5.5.1, §7). The room logic ([`crate::ws`]) sits on top; so does the
//! test-only echo route the Autobahn|Testsuite judges ([`echo`]).

use std::time::Duration;

use actix_web::web::{Bytes, Payload};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session};
use futures_util::StreamExt;

use crate::abort::{AbortHandle, ConnectionAbort};
use crate::error::ApiError;
use crate::frame_limit::{is_refused_as_too_large, FrameLimit};
use crate::metrics::STUCK_RESETS;
use crate::AppState;

/// Largest message a client may send (after joining continuation frames); bigger ones
/// close the socket with 1009.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How long the closing handshake may take (our Close queued and the connection gone)
/// before the connection is reset instead.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// After failing a connection, how long actix gets to write our Close before the TCP
/// connection ends (the broken frame stream cannot tell us when it is written).
const FAIL_FLUSH: Duration = Duration::from_millis(100);

/// Why a connection ends, and so how it is closed.
#[derive(Debug)]
pub enum Exit {
    /// The connection is gone (the peer vanished, or the close handshake is done).
    ClientClosed,
    /// The client sent a Close frame: answer it with one (RFC 6455 §5.5.1).
    ClientClose(Option<CloseReason>),
    /// The server closes the connection for this reason.
    Close(CloseReason),
    /// The client broke the protocol: send this Close and end the connection without
    /// reading further (RFC 6455 §7.1.7, "fail the WebSocket connection").
    Fail(CloseReason),
    /// A frame could not be written within the write timeout: the client does not read.
    Stuck,
}

/// The server closes with `code`, telling the client why.
pub fn close(code: CloseCode, description: &str) -> Exit {
    Exit::Close(CloseReason { code, description: Some(description.to_owned()) })
}

fn fail(code: CloseCode, description: &str) -> Exit {
    Exit::Fail(CloseReason { code, description: Some(description.to_owned()) })
}

/// What one read from the client means.
#[derive(Debug)]
pub enum Inbound {
    Text(bytestring::ByteString),
    Binary(Bytes),
    /// A ping to answer with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    /// The connection ends.
    End(Exit),
}

impl Inbound {
    /// Classifies what the frame stream yielded; protocol errors map to their close codes.
    pub fn from_stream(item: Option<Result<AggregatedMessage, ProtocolError>>) -> Self {
        match item {
            Some(Ok(AggregatedMessage::Text(text))) => Self::Text(text),
            Some(Ok(AggregatedMessage::Binary(bytes))) => Self::Binary(bytes),
            Some(Ok(AggregatedMessage::Ping(bytes))) => Self::Ping(bytes),
            Some(Ok(AggregatedMessage::Pong(_))) => Self::Pong,
            Some(Ok(AggregatedMessage::Close(reason))) => Self::End(Exit::ClientClose(reason)),
            None => Self::End(Exit::ClientClosed),
            Some(Err(ProtocolError::Overflow)) => Self::End(fail(CloseCode::Size, "message too large")),
            Some(Err(ProtocolError::Io(error)))
                if is_continuation_overflow(&error) || is_refused_as_too_large(&error) =>
            {
                Self::End(fail(CloseCode::Size, "message too large"))
            }
            Some(Err(ProtocolError::Io(error))) if is_invalid_utf8(&error) => {
                Self::End(fail(CloseCode::Invalid, "text is not valid UTF-8"))
            }
            // actix-http reports a broken Close payload (one byte, or a reason that is
            // not UTF-8) as a bad opcode, so the reason names both.
            Some(Err(ProtocolError::BadOpCode)) => {
                Self::End(fail(CloseCode::Protocol, "bad opcode or Close frame (1-byte payload, reason not UTF-8)"))
            }
            Some(Err(error)) => Self::End(fail(CloseCode::Protocol, &error.to_string())),
        }
    }
}

/// Whether the decoder refused text for not being UTF-8 (it reports that, and reserved
/// bits, as `InvalidData` I/O errors; only the former is a 1007).
fn is_invalid_utf8(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::InvalidData
        && error.get_ref().is_some_and(|inner| inner.is::<std::str::Utf8Error>() || inner.to_string().contains("utf-8"))
}

/// Whether joining continuation frames passed the size limit (the aggregator reports
/// that as an I/O error, not as `Overflow`).
fn is_continuation_overflow(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Other && error.to_string().contains("maximum continuation size")
}

/// The sending half of a socket: every write has a deadline.
pub struct SocketWriter {
    session: Session,
    abort: AbortHandle,
    write_timeout: Duration,
}

/// Upgrades the request: the response to return, the writer, and the incoming frames.
pub fn open(
    req: &HttpRequest,
    body: Payload,
    write_timeout: Duration,
) -> Result<(HttpResponse, SocketWriter, AggregatedMessageStream), ApiError> {
    // Oversized frames are refused at their header (actix-http's parser would buffer them
    // whole first).
    let limited: std::pin::Pin<Box<dyn futures_util::Stream<Item = _>>> =
        Box::pin(FrameLimit::new(body.into_inner(), MAX_MESSAGE_BYTES));
    let mut limited = actix_web::dev::Payload::Stream { payload: limited };
    let body = <Payload as actix_web::FromRequest>::from_request(req, &mut limited)
        .into_inner()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (response, session, stream) = actix_ws::handle(req, body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stream =
        stream.max_frame_size(MAX_MESSAGE_BYTES).aggregate_continuations().max_continuation_size(MAX_MESSAGE_BYTES);
    let abort = req.conn_data::<ConnectionAbort>().map(ConnectionAbort::downgrade).unwrap_or_default();
    Ok((response, SocketWriter { session, abort, write_timeout }, stream))
}

/// Maps a write to its outcome: done, the peer is gone, or the deadline passed.
async fn within(
    deadline: Duration,
    write: impl std::future::Future<Output = Result<(), actix_ws::Closed>>,
) -> Result<(), Exit> {
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_closed)) => Err(Exit::ClientClosed),
        Err(_elapsed) => Err(Exit::Stuck),
    }
}

impl SocketWriter {
    /// Hands a text frame to the socket, within the write timeout.
    pub async fn text(&mut self, text: impl Into<bytestring::ByteString>) -> Result<(), Exit> {
        within(self.write_timeout, self.session.text(text)).await
    }

    /// Hands a binary frame to the socket, within the write timeout.
    pub async fn binary(&mut self, bytes: Bytes) -> Result<(), Exit> {
        within(self.write_timeout, self.session.binary(bytes)).await
    }

    /// A ping, within the write timeout.
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Exit> {
        within(self.write_timeout, self.session.ping(payload)).await
    }

    /// The pong answering a ping, within the write timeout.
    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), Exit> {
        within(self.write_timeout, self.session.pong(payload)).await
    }

    /// Ends the connection the way `exit` says: answers or sends a Close and waits for
    /// the connection to end, or resets it when the client cannot be written to.
    pub async fn finish(self, stream: &mut AggregatedMessageStream, exit: Exit) {
        let (reason, read_on) = match exit {
            Exit::ClientClosed => return self.abort.abort_later(),
            Exit::Stuck => {
                STUCK_RESETS.add(1, &[]);
                tracing::info!(
                    timeout_ms = self.write_timeout.as_millis() as u64,
                    "a frame waited past the write timeout (the client reads too slowly or not at all); connection reset"
                );
                return self.abort.abort();
            }
            // Echo the client's code, or 1000 when it sent none. (Codes not allowed on
            // the wire never get here: the frame decoder refuses them as 1002.)
            Exit::ClientClose(reason) => {
                (CloseReason { code: reason.map_or(CloseCode::Normal, |r| r.code), description: None }, true)
            }
            Exit::Close(reason) => (reason, true),
            // The frame decoder repeats its error on every read: read no further.
            Exit::Fail(reason) => {
                tracing::info!(
                    close_code = u16::from(reason.code),
                    reason = reason.description.as_deref().unwrap_or_default(),
                    "the client broke the WebSocket protocol; connection failed"
                );
                (reason, false)
            }
        };
        let session = self.session;
        let handshake = async {
            if session.close(Some(reason)).await.is_err() {
                return Handshake::Gone;
            }
            if !read_on {
                return Handshake::Unobservable;
            }
            // Frames after our Close are ignored; the stream ends with the connection.
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => return Handshake::Unobservable,
                    None => return Handshake::Done,
                }
            }
        };
        match tokio::time::timeout(CLOSE_GRACE, handshake).await {
            Err(_elapsed) => self.abort.abort(),
            Ok(Handshake::Gone) => self.abort.abort_later(),
            // The stream ended when actix finished the response body: once our Close
            // has left the socket, the TCP connection ends.
            Ok(Handshake::Done) => self.abort.finish(CLOSE_GRACE).await,
            Ok(Handshake::Unobservable) => {
                tokio::time::sleep(FAIL_FLUSH).await;
                self.abort.finish(CLOSE_GRACE).await;
            }
        }
    }
}

/// How the closing handshake went.
enum Handshake {
    /// The connection was already gone.
    Gone,
    /// Our Close is written and the response is finished.
    Done,
    /// Our Close is queued; the frame stream cannot say when it is written.
    Unobservable,
}

/// `GET /ws/echo` (only with `--ws-echo`, for conformance tests): echoes every text and
/// binary message through the same transport as the rooms.
pub async fn echo(req: HttpRequest, body: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (response, mut writer, mut stream) = open(&req, body, state.settings.write_timeout())?;
    actix_web::rt::spawn(async move {
        let exit = loop {
            let step = match Inbound::from_stream(stream.next().await) {
                Inbound::Text(text) => writer.text(text).await,
                Inbound::Binary(bytes) => writer.binary(bytes).await,
                Inbound::Ping(bytes) => writer.pong(&bytes).await,
                Inbound::Pong => Ok(()),
                Inbound::End(exit) => Err(exit),
            };
            if let Err(exit) = step {
                break exit;
            }
        };
        writer.finish(&mut stream, exit).await;
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_opcode_fails_with_1002_naming_the_close_frame_too() {
        let Inbound::End(Exit::Fail(reason)) = Inbound::from_stream(Some(Err(ProtocolError::BadOpCode))) else {
            panic!("a bad opcode must fail the connection");
        };
        assert_eq!(reason.code, CloseCode::Protocol);
        assert!(reason.description.is_some_and(|text| text.contains("Close frame")));
    }
}
