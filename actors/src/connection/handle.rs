//! What jobs hold to use a connection: [`ConnHandle`] (`call`, `notify`, `respond`), the
//! [`Dispatch`] the reader hands inbound messages to, and their errors.

use super::*;

/// Why a message to the peer got no answer. The variants say what the caller can do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// No answer in time: the peer is slow or the connection is stuck; retry later.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection is gone: retry on the next one.
    #[error("the connection closed before the response arrived")]
    Closed,
    /// The peer answered that it could not serve the request.
    #[error("the peer answered with an error: {0}")]
    Refused(ErrorReply),
    /// The message cannot be sent at all (it does not fit in one frame): do not retry it as is.
    #[error("cannot send the message: {0}")]
    Unsendable(String),
    /// The peer answered with a message of another type.
    #[error("unexpected answer {got} (expected {expected})")]
    Unexpected { expected: &'static str, got: &'static str },
}

impl CallError {
    pub(crate) fn unexpected(expected: &'static str, got: &impl MessageName) -> Self {
        CallError::Unexpected { expected, got: got.name() }
    }
}

/// A request or notification from the peer, on its way to the job that serves its type. It holds
/// its share of the connection's inbound budget until it is dropped: a job drops it once the
/// answer is queued (or the notification handled).
pub(crate) struct Inbound<T> {
    pub kind: Kind,
    pub body: T,
    pub permit: InboundPermit,
}

/// A share of a connection's inbound budget (see [`Budgets`]).
pub struct InboundPermit {
    pub(super) _count: Option<OwnedSemaphorePermit>,
    pub(super) _bytes: Option<OwnedSemaphorePermit>,
}

impl InboundPermit {
    /// A permit that holds nothing (tests, and messages that are not the peer's).
    pub fn none() -> Self {
        Self { _count: None, _bytes: None }
    }
}

/// Why a message could not be handed to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undeliverable {
    /// No job takes this message in this form (a notification of a request type...): the reader
    /// answers a request with an `invalid` error and logs the rest.
    Invalid(String),
    /// The job has stopped (the connection is closing).
    Stopped,
}

/// The owner's job set, as the connection sees it: where inbound messages go, and how to stop.
pub(crate) trait Dispatch<S: Side> {
    /// Hands `message` to the job that serves its type; resolves once that job's mailbox took it.
    fn deliver(&self, message: Inbound<S::In>) -> LocalFuture<Result<(), Undeliverable>>;
    /// Stops every job for good; resolves once all have stopped.
    fn stop(&self) -> LocalFuture<()>;
}

/// One encoded message waiting for the writer, with its share of the outbound budget.
pub(super) struct Outgoing {
    pub(super) plain: BytesMut,
    pub(super) _permit: Option<OwnedSemaphorePermit>,
    /// The goodbye: written last, then the socket is shut down.
    pub(super) last: bool,
}

pub(super) type Pending<I> = Mutex<HashMap<u64, oneshot::Sender<Result<I, CallError>>>>;

pub(super) struct HandleInner<S: Side> {
    pub(super) node: String,
    pub(super) peer: String,
    /// The protocol version the two ends settled on.
    pub(super) version: ProtocolVersion,
    pub(super) request_timeout: Duration,
    /// Largest plaintext that fits in one frame.
    pub(super) max_plain: usize,
    pub(super) out: mpsc::Sender<Outgoing>,
    pub(super) out_budget: Arc<Semaphore>,
    pub(super) out_budget_max: usize,
    pub(super) pending: Pending<S::In>,
    pub(super) next: AtomicU64,
    pub(super) closed: AtomicBool,
}

/// What jobs hold to talk to the peer. Cheap to clone; every method fails with
/// [`CallError::Closed`] once the connection is gone.
pub struct ConnHandle<S: Side> {
    pub(super) inner: Arc<HandleInner<S>>,
}

impl<S: Side> Clone for ConnHandle<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

/// Removes a caller's pending entry when the call ends, however it ends.
pub(super) struct Forget<'a, I> {
    pub(super) pending: &'a Pending<I>,
    pub(super) seq: u64,
}

impl<I> Drop for Forget<'_, I> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.seq);
        }
    }
}

impl<S: Side> ConnHandle<S> {
    /// This node's name (for log lines).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The peer's node name.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// The protocol version the two ends settled on.
    pub fn version(&self) -> ProtocolVersion {
        self.inner.version
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Sends a request and waits for its answer (an error answer is [`CallError::Refused`]); gives
    /// up after the request timeout, waiting for room in the queue included.
    pub async fn call(&self, body: S::Out) -> Result<S::In, CallError> {
        let inner = &self.inner;
        let seq = inner.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = RequestId { origin: S::LOCAL, seq };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = inner.pending.lock() {
            p.insert(seq, tx);
        }
        let _forget = Forget { pending: &inner.pending, seq };
        let deadline = inner.request_timeout;
        let exchange = async {
            self.send(Envelope::request(id, body), false).await?;
            rx.await.map_err(|_| CallError::Closed)?
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(deadline)),
        }
    }

    /// Sends a notification (no answer).
    pub async fn notify(&self, body: S::Out) -> Result<(), CallError> {
        self.send(Envelope::notify(body), false).await
    }

    /// Answers the peer's request `id`.
    pub(crate) async fn respond(&self, id: RequestId, body: S::Out) -> Result<(), CallError> {
        self.send(Envelope::response(id, body), false).await
    }

    /// Answers the peer's request `id` with an error.
    pub(crate) async fn respond_error(&self, id: RequestId, code: ErrorCode, message: String) -> Result<(), CallError> {
        self.respond(id, S::error(ErrorReply { code, message })).await
    }

    /// Queues an error answer to `id` without waiting (from a `Drop`): skipped when the queue is
    /// full or the connection is gone, in which case the peer's request times out on its side.
    pub(crate) fn try_respond_error(&self, id: RequestId, code: ErrorCode, message: String) -> bool {
        let inner = &self.inner;
        if self.is_closed() {
            return false;
        }
        let Ok(plain) = message::to_bytes(&Envelope::response(id, S::error(ErrorReply { code, message }))) else {
            return false;
        };
        let cost = plain.len().clamp(1, inner.out_budget_max) as u32;
        let Ok(permit) = inner.out_budget.clone().try_acquire_many_owned(cost) else { return false };
        inner.out.try_send(Outgoing { plain, _permit: Some(permit), last: false }).is_ok()
    }

    pub(super) async fn send(&self, envelope: Envelope<S::Out>, last: bool) -> Result<(), CallError> {
        let inner = &self.inner;
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let plain = message::to_bytes(&envelope).map_err(|e| CallError::Unsendable(e.to_string()))?;
        if plain.len() > inner.max_plain {
            return Err(CallError::Unsendable(format!(
                "{} of {} bytes does not fit in a frame of {} bytes",
                envelope.body.name(),
                plain.len(),
                inner.max_plain
            )));
        }
        // The whole budget at most, so that one message of the largest size always gets through.
        let cost = plain.len().clamp(1, inner.out_budget_max) as u32;
        let permit = inner.out_budget.clone().acquire_many_owned(cost).await.map_err(|_| CallError::Closed)?;
        debug!(node = inner.node.as_str(); "sending {} to {}", envelope.body.name(), inner.peer);
        inner.out.send(Outgoing { plain, _permit: Some(permit), last }).await.map_err(|_| CallError::Closed)
    }

    /// Completes this side's request `id` with the peer's answer.
    pub(super) fn complete(&self, seq: u64, body: S::In) -> bool {
        let tx = self.inner.pending.lock().ok().and_then(|mut p| p.remove(&seq));
        match tx {
            Some(tx) => {
                let _ = tx.send(S::check_answer(body).map_err(CallError::Refused));
                true
            }
            None => false,
        }
    }

    /// Fails every call in flight and refuses new ones.
    pub(super) fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let drained: Vec<_> = self.inner.pending.lock().map(|mut p| p.drain().collect()).unwrap_or_default();
        for (_, tx) in drained {
            let _ = tx.send(Err(CallError::Closed));
        }
    }
}
