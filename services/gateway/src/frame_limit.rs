//! Refuses an oversized WebSocket frame when its header arrives, not when its payload has.
//!
//! actix-http's frame parser compares a frame's length with the limit only once the whole
//! frame is buffered, so a client that announces a frame of 2^40 bytes and keeps sending
//! makes the gateway buffer all of it (an outside audit saw 1.5 GB from three sockets in
//! under a second). This stream sits between the connection and that parser, follows the
//! frame boundaries (headers only; payload bytes are skipped, never copied), and ends the
//! stream with [`PayloadError::Overflow`] as soon as a header announces more than the
//! limit, so the socket is closed with 1009 at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// A client's frame bytes, checked frame by frame against a payload limit.
pub struct FrameLimit<S> {
    inner: S,
    max_payload: u64,
    at: Position,
    /// An error found after the start of a chunk whose first part was passed on.
    pending: Option<PayloadError>,
    ended: bool,
}

/// Where the next byte falls.
enum Position {
    /// In a frame header, of which `have` bytes are in `bytes`.
    Header { bytes: [u8; MAX_HEADER], have: usize },
    /// In a payload, `remaining` bytes before the next header.
    Payload { remaining: u64 },
}

impl Position {
    fn next_header() -> Self {
        Self::Header { bytes: [0; MAX_HEADER], have: 0 }
    }
}

impl<S> FrameLimit<S> {
    /// `inner`'s bytes, ended with an error at the first frame whose payload is over
    /// `max_payload` bytes.
    pub fn new(inner: S, max_payload: usize) -> Self {
        Self { inner, max_payload: max_payload as u64, at: Position::next_header(), pending: None, ended: false }
    }

    /// Follows `chunk`'s frame boundaries; on a refused header, the error and the offset
    /// of the chunk's first byte that belongs to that header.
    fn scan(&mut self, chunk: &[u8]) -> Result<(), (usize, PayloadError)> {
        let mut offset = 0;
        let mut header_start = 0;
        while offset < chunk.len() {
            match &mut self.at {
                Position::Payload { remaining } => {
                    let skip = (*remaining).min((chunk.len() - offset) as u64);
                    *remaining -= skip;
                    offset += skip as usize;
                    if *remaining == 0 {
                        self.at = Position::next_header();
                    }
                }
                Position::Header { bytes, have } => {
                    if *have == 0 {
                        header_start = offset;
                    }
                    bytes[*have] = chunk[offset];
                    *have += 1;
                    offset += 1;
                    match announced_length(&bytes[..*have]) {
                        Ok(None) => {}
                        Ok(Some(length)) if length > self.max_payload => {
                            return Err((header_start, PayloadError::Overflow));
                        }
                        Ok(Some(0)) => self.at = Position::next_header(),
                        Ok(Some(length)) => self.at = Position::Payload { remaining: length },
                        Err(error) => return Err((header_start, error)),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The payload length a frame header announces; `None` while `header` is incomplete.
/// A 64-bit length with its most significant bit set is an error (RFC 6455 §5.2).
fn announced_length(header: &[u8]) -> Result<Option<u64>, PayloadError> {
    let Some(&second) = header.get(1) else { return Ok(None) };
    let short = second & 0x7f;
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if header.len() < 2 + extended + mask {
        return Ok(None);
    }
    let length = match extended {
        0 => u64::from(short),
        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        _ => u64::from_be_bytes(header[2..10].try_into().unwrap_or_default()),
    };
    if length >> 63 != 0 {
        return Err(PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a frame length with its most significant bit set",
        )));
    }
    Ok(Some(length))
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(error) = this.pending.take() {
            this.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match this.scan(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                // The frames before the refused one are passed on first.
                Err((0, error)) => {
                    this.ended = true;
                    Poll::Ready(Some(Err(error)))
                }
                Err((start, error)) => {
                    this.pending = Some(error);
                    Poll::Ready(Some(Ok(chunk.slice(..start))))
                }
            },
            other => other,
        }
    }
}

/// Whether a frame stream error is this module's refusal of an oversized frame (actix-ws
/// hands payload errors on as I/O errors).
pub fn is_refused_as_too_large(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<PayloadError>())
        .is_some_and(|e| matches!(e, PayloadError::Overflow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use proptest::prelude::*;

    /// A masked client frame header announcing `length` bytes.
    fn header(length: u64) -> Vec<u8> {
        let mut bytes = vec![0x81];
        if length < 126 {
            bytes.push(0x80 | length as u8);
        } else if length <= u64::from(u16::MAX) {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(length as u16).to_be_bytes());
        } else {
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&length.to_be_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes
    }

    fn frame(length: usize) -> Vec<u8> {
        let mut bytes = header(length as u64);
        bytes.extend(std::iter::repeat_n(b'x', length));
        bytes
    }

    /// What the limited stream yields for `bytes` cut into `chunks`: the bytes passed on,
    /// and the error it ended with.
    fn run(bytes: &[u8], cuts: &[usize], max: usize) -> (Vec<u8>, Option<PayloadError>) {
        let mut pieces = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(start, bytes.len());
            pieces.push(Ok(Bytes::copy_from_slice(&bytes[start..cut])));
            start = cut;
        }
        let limited = FrameLimit::new(futures_util::stream::iter(pieces), max);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let items: Vec<_> = runtime.block_on(limited.collect());
        let mut passed = Vec::new();
        let mut error = None;
        for item in items {
            match item {
                Ok(chunk) => passed.extend_from_slice(&chunk),
                Err(e) => error = Some(e),
            }
        }
        (passed, error)
    }

    #[test]
    fn a_header_announcing_too_much_is_refused_before_any_payload() {
        let (passed, error) = run(&header(1 << 40), &[], 65_536);
        assert!(passed.is_empty());
        assert!(matches!(error, Some(PayloadError::Overflow)), "{error:?}");
        let (_, error) = run(&header(65_537), &[], 65_536);
        assert!(matches!(error, Some(PayloadError::Overflow)), "{error:?}");
    }

    #[test]
    fn frames_up_to_the_limit_pass_unchanged() {
        let bytes = [frame(0), frame(125), frame(126), frame(65_536)].concat();
        let (passed, error) = run(&bytes, &[1, 3, 200, 70_000], 65_536);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(passed, bytes);
    }

    #[test]
    fn the_frames_before_a_refused_one_are_passed_on() {
        let bytes = [frame(5), header(1 << 20)].concat();
        let (passed, error) = run(&bytes, &[], 65_536);
        assert_eq!(passed, frame(5));
        assert!(matches!(error, Some(PayloadError::Overflow)));
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_a_protocol_error() {
        let (_, error) = run(&header(u64::MAX), &[], 65_536);
        assert!(matches!(error, Some(PayloadError::Io(_))), "{error:?}");
    }

    proptest! {
        /// Wherever the chunks are cut, the same bytes pass and the same frame is refused.
        #[test]
        fn chunking_changes_nothing(
            lengths in proptest::collection::vec(0usize..300, 0..6),
            oversized in proptest::option::of(301u64..u64::MAX >> 1),
            cuts in proptest::collection::vec(0usize..2_000, 0..8),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let good: Vec<u8> = lengths.iter().flat_map(|&n| frame(n)).collect();
            let bytes = [good.clone(), oversized.map(header).unwrap_or_default()].concat();
            let (passed, error) = run(&bytes, &cuts, 300);
            prop_assert_eq!(matches!(error, Some(PayloadError::Overflow)), oversized.is_some());
            if oversized.is_some() {
                // Bytes of the refused header may have passed in an earlier chunk; nothing
                // beyond it ever does.
                prop_assert!(passed.len() <= bytes.len() && passed.starts_with(&good));
            } else {
                prop_assert_eq!(passed, bytes);
            }
        }
    }
}
