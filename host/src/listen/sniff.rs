//! A look at each HTTP/1.1 request head as it arrives on the wire, before
//! hyper parses it, for the ambiguities hyper resolves silently.
//!
//! hyper reads a request with both `Content-Length` and
//! `Transfer-Encoding` as chunked and drops the length; of several equal
//! `Content-Length` fields it keeps one. The request the gateway then sees
//! is unambiguous, so the request checks (`proxy::checks`) cannot tell — but a server in front
//! of the gateway may have framed the same bytes the other way, which is
//! how requests are smuggled. Envoy refuses such messages, and so does weir:
//! [`Sniffed`] wraps the connection's byte stream, parses each head with
//! httparse (the parser hyper uses) and follows the body's framing to find
//! the next head. It records one [`Verdict`] per head, in order; the request
//! path takes them in the same order, one per request, and refuses an
//! ambiguous one with `400` and `Connection: close`.
//!
//! The sniffer only ever adds a refusal. When it cannot follow the stream
//! (a head or chunk line it cannot parse, which hyper refuses anyway; an
//! upgrade or `CONNECT`, after which the bytes are not HTTP; HTTP/2) it
//! stops looking and leaves the connection to hyper.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::checks::Verdict;

/// The verdicts for a connection's bytes, read in the given pieces
/// (fuzzing and tests: the pieces must not change the verdicts).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn verdicts_of(pieces: &[&[u8]]) -> Vec<Verdict> {
    let verdicts = Verdicts::default();
    let mut sniffer = Sniffed::new((), verdicts.clone());
    for p in pieces {
        sniffer.feed(p);
    }
    verdicts.lock().map(|v| v.iter().copied().collect()).unwrap_or_default()
}

/// The verdicts of one connection, oldest first, shared between the
/// sniffer (which pushes) and the service (which pops one per request).
pub(crate) type Verdicts = Arc<Mutex<VecDeque<Verdict>>>;

/// Longest head or chunk-size line the sniffer follows; beyond, hyper's own
/// limits answer and the sniffer stops.
const MAX_LINE: usize = 256 << 10;
/// Most headers the sniffer parses (on the stack). A head with more is
/// left to hyper (which refuses more than `[limits] max_header_count`, 100
/// by default) and the sniffer stops.
const MAX_HEADERS: usize = 128;

#[derive(Debug)]
enum State {
    /// Gathering a head.
    Head(Vec<u8>),
    /// In a body of known length: bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Not following the stream any more.
    Off,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// In chunk data: bytes left, then CRLF.
    Data(u64),
    /// Reading the line ending after chunk data.
    DataEnd(Vec<u8>),
    /// Reading trailer lines until an empty one.
    Trailer(Vec<u8>),
}

/// A byte stream whose request heads are looked at on their way to hyper.
pub(crate) struct Sniffed<S> {
    inner: S,
    state: State,
    verdicts: Verdicts,
}

impl<S> Sniffed<S> {
    /// Watch `inner`, recording into `verdicts`.
    pub(crate) fn new(inner: S, verdicts: Verdicts) -> Self {
        Self { inner, state: State::Head(Vec::new()), verdicts }
    }

    /// Follow `bytes` through the framing, recording a verdict per head.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            let (next, used) = match state {
                State::Off => return,
                State::Head(buf) => self.head(buf, bytes),
                State::Length(left) => {
                    let take = left.min(bytes.len() as u64);
                    let next = if take == left { State::Head(Vec::new()) } else { State::Length(left - take) };
                    (next, take as usize)
                }
                State::Chunked(c) => chunked(c, bytes),
            };
            self.state = next;
            bytes = &bytes[used..];
        }
    }

    /// Add bytes to a head; at its end, judge it and pick the body's framing.
    fn head(&mut self, mut buf: Vec<u8>, bytes: &[u8]) -> (State, usize) {
        let before = buf.len();
        // A head that arrives whole in one read is parsed where it lies;
        // only a head split across reads is gathered.
        let wire: &[u8] = if buf.is_empty() {
            bytes
        } else {
            buf.extend_from_slice(bytes);
            &buf
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // (The HTTP/2 preface does not parse as an HTTP/1 head: the sniffer
        // stops there.)
        let end = match req.parse(wire) {
            Ok(httparse::Status::Complete(end)) => end,
            Ok(httparse::Status::Partial) if wire.len() <= MAX_LINE => {
                let gathered = if before == 0 { bytes.to_vec() } else { buf };
                return (State::Head(gathered), bytes.len());
            }
            _ => return (State::Off, bytes.len()),
        };
        let (mut lengths, mut first_length, mut codings, mut upgrade) = (0usize, None, 0usize, false);
        let mut chunked_last = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                first_length = first_length.or(Some(h.value));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                codings += 1;
                chunked_last = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let connect = req.method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
        let verdict = match (lengths, codings) {
            (1.., 1..) => Verdict::LengthAndChunked,
            (2.., 0) => Verdict::SeveralLengths,
            _ => Verdict::Clear,
        };
        self.verdicts.lock().unwrap_or_else(|p| p.into_inner()).push_back(verdict);
        let used = end - before;
        // A refused request closes the connection; past an upgrade or a
        // CONNECT the bytes are not HTTP any more.
        if verdict != Verdict::Clear || upgrade || connect {
            return (State::Off, used);
        }
        let next = if codings > 0 {
            if chunked_last { State::Chunked(Chunk::Size(Vec::new())) } else { State::Off }
        } else if let Some(len) = first_length {
            match std::str::from_utf8(len).ok().and_then(|t| t.trim().parse::<u64>().ok()) {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Length(n),
                None => State::Off,
            }
        } else {
            State::Head(Vec::new())
        };
        (next, used)
    }
}

/// Follow a chunked body; returns the next state and the bytes used.
fn chunked(c: Chunk, bytes: &[u8]) -> (State, usize) {
    match c {
        Chunk::Size(mut line) => match line_end(&mut line, bytes) {
            None if line.len() <= MAX_LINE => (State::Chunked(Chunk::Size(line)), bytes.len()),
            None => (State::Off, bytes.len()),
            Some(used) => {
                let text = String::from_utf8_lossy(&line);
                let digits = text.split([';', ' ', '\t', '\r', '\n']).next().unwrap_or("");
                match u64::from_str_radix(digits, 16) {
                    Ok(0) => (State::Chunked(Chunk::Trailer(Vec::new())), used),
                    Ok(n) => (State::Chunked(Chunk::Data(n)), used),
                    Err(_) => (State::Off, used),
                }
            }
        },
        Chunk::Data(left) => {
            let take = left.min(bytes.len() as u64);
            let next = if take == left { Chunk::DataEnd(Vec::new()) } else { Chunk::Data(left - take) };
            (State::Chunked(next), take as usize)
        }
        Chunk::DataEnd(mut line) => match line_end(&mut line, bytes) {
            None if line.len() <= 2 => (State::Chunked(Chunk::DataEnd(line)), bytes.len()),
            None => (State::Off, bytes.len()),
            Some(used) if line == b"\r\n" || line == b"\n" => (State::Chunked(Chunk::Size(Vec::new())), used),
            Some(used) => (State::Off, used),
        },
        Chunk::Trailer(mut line) => match line_end(&mut line, bytes) {
            None if line.len() <= MAX_LINE => (State::Chunked(Chunk::Trailer(line)), bytes.len()),
            None => (State::Off, bytes.len()),
            Some(used) if line == b"\r\n" || line == b"\n" => (State::Head(Vec::new()), used),
            Some(used) => (State::Chunked(Chunk::Trailer(Vec::new())), used),
        },
    }
}

/// Append `bytes` to `line` up to and including the first LF; the bytes
/// used when the line is complete.
fn line_end(line: &mut Vec<u8>, bytes: &[u8]) -> Option<usize> {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            Some(i + 1)
        }
        None => {
            line.extend_from_slice(bytes);
            None
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && !matches!(self.state, State::Off)
        {
            self.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `wire` in pieces of `step` bytes; the verdicts recorded.
    fn verdicts(wire: &[u8], step: usize) -> Vec<Verdict> {
        let v: Verdicts = Arc::default();
        let mut s = Sniffed::new((), v.clone());
        for piece in wire.chunks(step) {
            s.feed(piece);
        }
        v.lock().expect("verdicts").iter().copied().collect()
    }

    #[test]
    fn follows_pipelined_requests_through_their_bodies() {
        let wire = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                     POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: v\r\n\r\n\
                     GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
                     POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 3, 7, 64, wire.len()] {
            assert_eq!(
                verdicts(wire, step),
                [Verdict::Clear, Verdict::Clear, Verdict::Clear, Verdict::LengthAndChunked],
                "in pieces of {step}"
            );
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_judged() {
        let inner = b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut wire = format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", inner.len()).into_bytes();
        wire.extend_from_slice(inner);
        wire.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(verdicts(&wire, 5), [Verdict::Clear, Verdict::Clear]);
    }

    #[test]
    fn several_lengths_and_stopping() {
        assert_eq!(
            verdicts(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 4),
            [Verdict::SeveralLengths]
        );
        // After an upgrade the sniffer stops: nothing after it is judged.
        let ws = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
                   POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(ws, 9), [Verdict::Clear]);
        // HTTP/2 is left alone.
        assert_eq!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 2), []);
    }
}
