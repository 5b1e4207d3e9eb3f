//! Bodies streamed through plugins chunk by chunk (contract `0.2.4`,
//! `streaming`): each data frame, as it arrives, goes through the plugins
//! that stream that side, in their order, and what they pass on is the
//! next frame. Nothing is held beyond the chunk in hand, and the next frame
//! is read only when this one has been taken: back-pressure is the
//! client's (or the upstream's) own.
//!
//! A chunk dropped by one plugin (replaced by nothing) is not shown to the
//! next; the end of the body always is (`end`, with whatever bytes the
//! plugins before added). A plugin that aborts, or fails under `failure =
//! "closed"`, ends the body with an error; under `failure = "open"` its
//! chunk passes unchanged.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use weir_config::FailurePolicy;
use weir_plugin_host::{ChunkAction, Heads, LoadedPlugin, PluginFailure, RequestSlot};

use crate::body::{self, BoxError, ProxyBody};

/// Which body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

/// The plugins a body streams through, with the request's heads (read-only)
/// and each plugin's request-local slot.
pub(super) struct Streamer {
    pub(super) side: Side,
    /// In call order (chain order for the request, reverse for the response).
    pub(super) plugins: Vec<(Arc<LoadedPlugin>, RequestSlot)>,
    pub(super) heads: Option<Heads>,
    /// Largest chunk a plugin may pass on (`server.max_buffered_body`).
    pub(super) max: u64,
}

/// Where the stream is.
struct State {
    streamer: Streamer,
    inner: Option<ProxyBody>,
    /// Trailers read after the last data, sent after the end call's bytes.
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

/// `body` as it comes out of the streamer's plugins.
pub(super) fn wrap(streamer: Streamer, body: ProxyBody) -> ProxyBody {
    let state = State { streamer, inner: Some(body), trailers: None, done: false };
    let frames = futures::stream::unfold(state, |mut s| async move {
        let frame = s.next().await?;
        Some((frame, s))
    });
    body::boxed(StreamBody::new(Exclusive(Mutex::new(Box::pin(frames)))))
}

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>>;

/// The frames, `Sync` as a body must be: the plugin instances they hold
/// are not, but a body is only ever polled through `&mut`, so the mutex is
/// reached with `get_mut` and never locked.
struct Exclusive(Mutex<Frames>);

impl Stream for Exclusive {
    type Item = Result<Frame<Bytes>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.get_mut().unwrap_or_else(PoisonError::into_inner).as_mut().poll_next(cx)
    }
}

impl State {
    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if let Some(trailers) = self.trailers.take() {
                return Some(Ok(trailers));
            }
            if self.done {
                return None;
            }
            let inner = self.inner.as_mut()?;
            let (chunk, end) = match inner.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data, false),
                    Err(trailers) => {
                        self.trailers = Some(trailers);
                        (Bytes::new(), true)
                    }
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => (Bytes::new(), true),
            };
            if end {
                self.done = true;
                self.inner = None;
            }
            match self.streamer.pass(chunk, end).await {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Some(Ok(Frame::data(out))),
                Err(e) => {
                    self.done = true;
                    self.trailers = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Streamer {
    /// One chunk through every plugin; what comes out.
    async fn pass(&mut self, mut chunk: Bytes, end: bool) -> Result<Bytes, BoxError> {
        for (plugin, slot) in &mut self.plugins {
            if chunk.is_empty() && !end {
                break;
            }
            let result = match self.side {
                Side::Request => plugin.on_request_chunk(&mut self.heads, &chunk, end, slot).await,
                Side::Response => plugin.on_response_chunk(&mut self.heads, &chunk, end, slot).await,
            };
            // Outbound calls of chunk calls are not kept (no span, no log).
            if let Some(h) = &mut self.heads {
                h.outbound.calls.clear();
            }
            let failure = match result {
                Ok(ChunkAction::Pass) => continue,
                Ok(ChunkAction::Replace(bytes)) if bytes.len() as u64 <= self.max => {
                    chunk = bytes.into();
                    continue;
                }
                Ok(ChunkAction::Replace(bytes)) => {
                    plugin.count_invalid();
                    PluginFailure::InvalidOutput(format!("a chunk of {} bytes exceeds {}", bytes.len(), self.max))
                }
                Ok(ChunkAction::Abort(reason)) => PluginFailure::Aborted(reason),
                Err(failure) => failure,
            };
            let side = if self.side == Side::Request { "request" } else { "response" };
            if plugin.spec().failure == FailurePolicy::Open && !matches!(failure, PluginFailure::Aborted(_)) {
                tracing::warn!(plugin = %plugin.name(), %failure, side, "chunk call failed; chunk passed (failure = \"open\")");
                continue;
            }
            tracing::warn!(plugin = %plugin.name(), %failure, side, "body cut off by a plugin");
            return Err(format!("plugin `{}`: {failure}", plugin.name()).into());
        }
        Ok(chunk)
    }
}
