//! The one body type that flows through the proxy: a boxed stream of bytes,
//! so a streamed upstream body, a buffered plugin body and a synthetic error
//! body are interchangeable without copying.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors a body stream can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Box any body whose error is a concrete error type. (A generic
/// `Into<BodyError>` bound trips the compiler's higher-ranked inference
/// inside the request future, hence the concrete bound.)
pub fn boxed<B, E>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = E> + Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    body.map_err(|e| Box::new(e) as BodyError).boxed()
}

/// A body that fails when no frame arrives for `timeout`: a stalled upstream
/// body aborts the client connection instead of holding it forever.
pub fn idle_timeout(inner: Body, timeout: std::time::Duration) -> Body {
    IdleTimeout {
        inner,
        timeout,
        sleep: None,
    }
    .boxed()
}

/// The error an [`idle_timeout`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for more than {0:?}")]
pub struct BodyIdle(std::time::Duration);

struct IdleTimeout {
    inner: Body,
    timeout: std::time::Duration,
    /// Armed the first time the body has to wait: a body whose frames are
    /// all ready at once (most small responses) never touches the timer.
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = &mut this.sleep {
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.timeout);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body that adds the length of every data frame to `counter`.
pub fn counted(inner: Body, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Body {
    Counted {
        inner,
        counter,
        sent: 0,
        done: None,
    }
    .boxed()
}

/// A body that calls `done` with the bytes it carried once it is dropped:
/// after it has been sent, or when the client went away first.
pub fn on_drop(inner: Body, done: impl FnOnce(u64) + Send + Sync + 'static) -> Body {
    Counted {
        inner,
        counter: std::sync::Arc::default(),
        sent: 0,
        done: Some(Box::new(done)),
    }
    .boxed()
}

type Done = Box<dyn FnOnce(u64) + Send + Sync>;

struct Counted {
    inner: Body,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: u64,
    done: Option<Done>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                this.sent += len;
                this.counter
                    .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}
