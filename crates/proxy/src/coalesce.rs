//! Write coalescing for multiplexed (HTTP/2) connections.
//!
//! The h2 connection task writes whatever frames it holds each time it is
//! polled. Under load the stream tasks finish one after another and each wakes
//! the connection task, which tokio runs next (its LIFO slot): one response per
//! socket write, one TLS record, one wake-up of the client. [`Coalesce`] makes
//! the first write attempt after each flush yield once to the scheduler
//! instead: the connection task goes to the back of the run queue, the stream
//! tasks already runnable add their frames, and the next attempt writes them
//! all in one go. When nothing else is runnable the task is polled again at
//! once: one extra poll per flush, no added wait. Writes within one flush
//! (a large body written in several calls) pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct Coalesce<I> {
    io: I,
    /// The next write yields first: set by every completed flush.
    hold: bool,
}

impl<I> Coalesce<I> {
    pub(crate) fn new(io: I) -> Self {
        Self { io, hold: true }
    }

    /// On the first write of a batch: `Pending` with the task woken, so it is
    /// polled again after the tasks already queued. `Ready` otherwise.
    fn hold(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.hold {
            self.hold = false;
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.hold(cx));
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.hold(cx));
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.hold = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write(io: &mut Coalesce<Vec<u8>>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(io).poll_write(cx, buf)
    }

    fn flush(io: &mut Coalesce<Vec<u8>>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(io).poll_flush(cx)
    }

    #[test]
    fn first_write_after_each_flush_yields_once_and_wakes() {
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesce::new(Vec::new());

        assert!(write(&mut io, &mut cx, b"ab").is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "a yield must wake the task, or it hangs");
        assert!(io.io.is_empty(), "nothing written while yielding");
        assert!(matches!(write(&mut io, &mut cx, b"ab"), Poll::Ready(Ok(2))));
        // Further writes of the same batch pass straight through.
        assert!(matches!(write(&mut io, &mut cx, b"cd"), Poll::Ready(Ok(2))));
        assert!(matches!(flush(&mut io, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);

        // The next batch yields again.
        let bufs = [io::IoSlice::new(b"e"), io::IoSlice::new(b"f")];
        assert!(Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        assert!(matches!(Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs), Poll::Ready(Ok(1 | 2))));
        assert!(io.io.starts_with(b"abcde"));
    }

    #[tokio::test]
    async fn bytes_arrive_unchanged_through_an_executor() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Coalesce::new(a);
        let writer = tokio::spawn(async move {
            for i in 0..100u8 {
                a.write_all(&[i; 7]).await.expect("write");
                if i % 3 == 0 {
                    a.flush().await.expect("flush");
                }
            }
            a.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got).await.expect("read");
        writer.await.expect("writer");
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 7]).collect();
        assert_eq!(got, want);
    }
}
