//! A response read into the cache at the upstream's pace, not its first
//! client's. A task of its own reads the upstream body into a [`Fill`];
//! every client of the response (the leader, and followers that arrived
//! while it was in flight) reads from the fill at its own pace, so a client
//! reading at 1 KB/s slows only itself (Varnish's streaming delivery of a
//! busy object; nginx's `proxy_cache_lock` with the lock released at the
//! upstream's pace).
//!
//! A body larger than `max_entry_bytes` is not stored: the fill keeps what
//! it read and hands the rest of the upstream body to the leader, which
//! alone streams it. Followers are only attached to fills whose length is
//! known to fit, so they never see that hand-over.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BodyError};

/// The shared, growing body of one response being filled.
pub struct Fill {
    state: Mutex<FillState>,
    /// The body's length, when the upstream declared it.
    length: Option<u64>,
    readers: AtomicU64,
}

struct FillState {
    chunks: Vec<Bytes>,
    len: usize,
    end: End,
    /// After [`End::HandedOver`]: the unread rest of the upstream body,
    /// taken by the leader's reader.
    rest: Option<Body>,
    /// Readers waiting for the next chunk, by reader id.
    waiting: Vec<(u64, Waker)>,
}

enum End {
    Open,
    Complete,
    Failed,
    /// Too large to store: the leader streams the rest itself.
    HandedOver,
}

/// The upstream body failed while the cache was reading it.
#[derive(Debug, thiserror::Error)]
#[error("the upstream body failed while it was being cached")]
pub struct FillFailed;

impl Fill {
    pub fn new(length: Option<u64>) -> Arc<Fill> {
        Arc::new(Fill {
            state: Mutex::new(FillState {
                chunks: Vec::new(),
                len: 0,
                end: End::Open,
                rest: None,
                waiting: Vec::new(),
            }),
            length,
            readers: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, FillState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Read `body` into the fill, at the upstream's pace. Returns the whole
    /// body if it ended cleanly within `limit` bytes, `None` otherwise.
    pub async fn run(self: Arc<Self>, mut body: Body, limit: usize) -> Option<Bytes> {
        loop {
            let frame = body.frame().await;
            let mut state = self.state();
            match frame {
                None => {
                    state.end = End::Complete;
                    let whole = concat(&state.chunks, state.len);
                    wake_all(&mut state);
                    return Some(whole);
                }
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "upstream body failed while filling the cache");
                    state.end = End::Failed;
                    wake_all(&mut state);
                    return None;
                }
                Some(Ok(frame)) => {
                    // Trailers are not kept: the cache stores heads and bodies.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    state.len += data.len();
                    state.chunks.push(data);
                    if state.len > limit {
                        state.end = End::HandedOver;
                        state.rest = Some(body);
                        wake_all(&mut state);
                        return None;
                    }
                    wake_all(&mut state);
                }
            }
        }
    }

    /// A body reading this fill from its start. Only the `leader`'s reader
    /// takes over the upstream body of an oversized response.
    pub fn reader(self: &Arc<Self>, leader: bool) -> Body {
        FillReader {
            fill: self.clone(),
            id: self.readers.fetch_add(1, Ordering::Relaxed),
            next: 0,
            leader,
            rest: None,
        }
        .boxed()
    }
}

fn wake_all(state: &mut FillState) {
    for (_, waker) in state.waiting.drain(..) {
        waker.wake();
    }
}

fn concat(chunks: &[Bytes], len: usize) -> Bytes {
    if let [only] = chunks {
        return only.clone();
    }
    let mut whole = BytesMut::with_capacity(len);
    for chunk in chunks {
        whole.extend_from_slice(chunk);
    }
    whole.freeze()
}

struct FillReader {
    fill: Arc<Fill>,
    id: u64,
    /// Index of the next chunk to send.
    next: usize,
    leader: bool,
    /// The upstream body, once handed over.
    rest: Option<Body>,
}

impl http_body::Body for FillReader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(rest) = &mut this.rest {
            return Pin::new(rest).poll_frame(cx);
        }
        let mut state = this.fill.state();
        if let Some(chunk) = state.chunks.get(this.next).cloned() {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match state.end {
            End::Complete => Poll::Ready(None),
            End::Failed => Poll::Ready(Some(Err(Box::new(FillFailed)))),
            End::HandedOver if this.leader => match state.rest.take() {
                Some(rest) => {
                    drop(state);
                    Pin::new(this.rest.insert(rest)).poll_frame(cx)
                }
                None => Poll::Ready(Some(Err(Box::new(FillFailed)))),
            },
            End::HandedOver => Poll::Ready(Some(Err(Box::new(FillFailed)))),
            End::Open => {
                let id = this.id;
                match state.waiting.iter_mut().find(|(reader, _)| *reader == id) {
                    Some((_, waker)) => waker.clone_from(cx.waker()),
                    None => state.waiting.push((id, cx.waker().clone())),
                }
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.fill.length {
            Some(length) if self.rest.is_none() => {
                let sent: usize = self.fill.state().chunks[..self.next]
                    .iter()
                    .map(Bytes::len)
                    .sum();
                SizeHint::with_exact(length.saturating_sub(sent as u64))
            }
            _ => SizeHint::default(),
        }
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        let id = self.id;
        self.fill
            .state()
            .waiting
            .retain(|(reader, _)| *reader != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body yielding these chunks, one per poll.
    struct Chunks(std::collections::VecDeque<&'static str>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))),
            )
        }
    }

    fn chunks(parts: &[&'static str]) -> Body {
        Chunks(parts.iter().copied().collect()).boxed()
    }

    #[tokio::test]
    async fn every_reader_gets_the_whole_body_and_it_is_stored() {
        let fill = Fill::new(Some(10));
        let (a, b) = (fill.reader(true), fill.reader(false));
        let stored = tokio::spawn(fill.run(chunks(&["hello", "world"]), 64));
        let a = a.collect().await.unwrap().to_bytes();
        let b = b.collect().await.unwrap().to_bytes();
        assert_eq!((&a[..], &b[..]), (&b"helloworld"[..], &b"helloworld"[..]));
        assert_eq!(stored.await.unwrap().unwrap(), "helloworld");
    }

    #[tokio::test]
    async fn an_oversized_body_is_not_stored_but_reaches_the_leader() {
        let fill = Fill::new(None);
        let leader = fill.reader(true);
        let stored = fill.clone().run(chunks(&["aaaa", "bbbb", "cccc"]), 6).await;
        assert!(stored.is_none());
        let whole = leader.collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"aaaabbbbcccc");
        assert!(fill.reader(false).collect().await.is_err());
    }
}
