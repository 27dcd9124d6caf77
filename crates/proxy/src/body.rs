//! Body types of the proxy path: both stream frame by frame, neither ever
//! buffers a whole body.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::pool::Reuse;

/// Boxed error of [`RequestBody`], as the hyper client wants it.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// The client's request body on its way upstream, cut off with
/// [`BodyTooLarge`] once it exceeds the configured limit.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    /// Bytes still allowed; `u64::MAX` when unlimited.
    remaining: u64,
}

/// The error a [`RequestBody`] yields when it grows past the limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTooLarge;

/// A response body: the upstream's, streamed, or a small local one.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// Streamed from the upstream.
    Upstream(UpstreamBody),
    /// A complete local body (errors, redirects); `None` once sent.
    Full(Option<Bytes>),
}

/// The upstream's response body; hands its HTTP/1.1 connection back to
/// the pool when dropped after the last frame (dropped earlier, the
/// connection closes: the rest of the response is still on it).
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    reuse: Option<Reuse>,
    /// `poll_frame` returned the end (chunked bodies never report
    /// `is_end_stream`).
    ended: bool,
}

// === impl RequestBody ===

impl RequestBody {
    /// Wraps `inner`, allowing at most `limit` bytes.
    pub(crate) fn new(inner: Incoming, limit: Option<u64>) -> Self {
        Self { inner, remaining: limit.unwrap_or(u64::MAX) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx)).map(|f| f.map_err(BoxError::from));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()).and_then(Frame::data_ref) {
            let len = data.len() as u64;
            if len > this.remaining {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
            }
            this.remaining -= len;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl BodyTooLarge ===

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body exceeds the configured limit")
    }
}

impl StdError for BodyTooLarge {}

// === impl ResponseBody ===

impl ResponseBody {
    /// The upstream's body; `reuse` is its connection when that can serve
    /// another request afterwards.
    pub(crate) fn upstream(inner: Incoming, reuse: Option<Reuse>) -> Self {
        Self::Upstream(UpstreamBody { inner, reuse, ended: false })
    }

    /// A complete local body.
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes).filter(|b| !b.is_empty()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(up) => {
                let frame = ready!(Pin::new(&mut up.inner).poll_frame(cx));
                up.ended |= frame.is_none();
                Poll::Ready(frame)
            }
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(up) => up.ended || up.inner.is_end_stream(),
            Self::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(up) => up.inner.size_hint(),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

// === impl UpstreamBody ===

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(reuse) = self.reuse.take()
            && (self.ended || self.inner.is_end_stream())
        {
            reuse.release();
        }
    }
}
