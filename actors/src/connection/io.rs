//! The socket's two tasks: the reader (frames in, answers matched, requests dispatched within the
//! inbound budget) and the writer (sealed batches out).

use super::*;

/// Decodes envelopes and says how many bytes each took on the wire.
pub(super) struct SizedDecoder<T>(pub(super) MessageDecoder<T>);

impl<T: DeserializeOwned> Decoder for SizedDecoder<T> {
    type Item = (Envelope<T>, usize);
    type Error = ChannelError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, ChannelError> {
        let before = src.len();
        Ok(self.0.decode(src)?.map(|e| (e, before - src.len())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, ChannelError> {
        let before = src.len();
        Ok(self.0.decode_eof(src)?.map(|e| (e, before - src.len())))
    }
}

/// The inbound budget: permits for requests in flight and for their bytes.
pub(super) struct InboundBudget {
    pub(super) count: Arc<Semaphore>,
    pub(super) bytes: Arc<Semaphore>,
    pub(super) max_bytes: usize,
}

impl InboundBudget {
    pub(super) fn new(b: &Budgets) -> Self {
        let max_bytes = b.inbound_bytes.max(1);
        Self {
            count: Arc::new(Semaphore::new(b.inbound_requests.max(1))),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        }
    }

    pub(super) async fn acquire(&self, size: usize) -> Option<InboundPermit> {
        let count = self.count.clone().acquire_owned().await.ok()?;
        let bytes = self.bytes.clone().acquire_many_owned(size.clamp(1, self.max_bytes) as u32).await.ok()?;
        Some(InboundPermit { _count: Some(count), _bytes: Some(bytes) })
    }

    pub(super) fn in_flight(&self, limit: usize) -> usize {
        limit.saturating_sub(self.count.available_permits())
    }
}

/// What the reader and the actor share: when bytes last arrived, how many frames did, and whether
/// the reader is waiting for the inbound budget (then the peer is not silent, we are not reading).
pub(super) struct Activity {
    pub(super) last_heard: Cell<Instant>,
    pub(super) frames: Cell<u64>,
    pub(super) throttled: Cell<bool>,
}

/// The socket's read side, noting each time bytes arrive: a peer sending one large frame over a
/// slow link is not silent.
pub(super) struct Heard<R> {
    pub(super) inner: R,
    pub(super) activity: Rc<Activity>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Heard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.last_heard.set(Instant::now());
        }
        polled
    }
}

/// The reading side of a connection.
pub(super) struct Reader<S: Side> {
    pub(super) handle: ConnHandle<S>,
    pub(super) dispatch: Rc<dyn Dispatch<S>>,
    pub(super) budget: Rc<InboundBudget>,
    pub(super) activity: Rc<Activity>,
}

impl<S: Side> Reader<S> {
    /// Reads until the peer leaves or faults; returns why, and how loudly to say it.
    pub(super) async fn run(
        self,
        mut frames: FramedRead<Box<dyn AsyncRead + Unpin>, SizedDecoder<S::In>>,
    ) -> (String, log::Level) {
        let node = self.handle.node().to_string();
        let peer = self.handle.peer().to_string();
        loop {
            let (envelope, size) = match frames.next().await {
                Some(Ok(item)) => item,
                Some(Err(err)) => return (err.to_string(), log::Level::Warn),
                None => return ("the peer closed the connection".into(), S::LIFECYCLE),
            };
            self.activity.frames.set(self.activity.frames.get() + 1);
            if let Err(err) = envelope.kind.check_from(peer_role(S::LOCAL)) {
                return (err.to_string(), log::Level::Warn);
            }
            if let Some(reason) = S::goodbye_reason(&envelope.body) {
                return (format!("the {} said goodbye: {reason}", peer_role(S::LOCAL)), log::Level::Info);
            }
            let Envelope { kind, body } = envelope;
            if let Kind::Response(id) = kind {
                if !self.handle.complete(id.seq, body) {
                    debug!(node = node.as_str(); "late or unknown response {id} from {peer}; ignored");
                }
                continue;
            }
            // A request or a notification: it waits for its share of the budget, and while it
            // waits nothing more is read from the socket.
            self.activity.throttled.set(true);
            let permit = self.budget.acquire(size).await;
            self.activity.throttled.set(false);
            let Some(permit) = permit else { return ("the inbound budget closed".into(), log::Level::Warn) };
            let name = body.name();
            match self.dispatch.deliver(Inbound { kind, body, permit }).await {
                Ok(()) => {}
                Err(Undeliverable::Invalid(why)) => {
                    warn!(node = node.as_str(); "{} {peer}: {why}", peer_role(S::LOCAL));
                    if let Kind::Request(id) = kind {
                        let _ = self.handle.respond_error(id, ErrorCode::Invalid, why).await;
                    }
                }
                Err(Undeliverable::Stopped) => {
                    debug!(node = node.as_str(); "{name} from {peer} arrived while its job was stopping; dropped");
                    if let Kind::Request(id) = kind {
                        let message = "the job serving this request is stopping".to_string();
                        let _ = self.handle.respond_error(id, ErrorCode::Unavailable, message).await;
                    }
                }
            }
        }
    }
}

/// Most bytes sealed into one write.
pub(super) const WRITE_BATCH: usize = 1 << 20;

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error("cannot seal a frame: {0}")]
    Seal(#[from] wazuh_cluster_protocol::transport::TransportError),
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer has not read what it was sent for {:.1}s", .0.as_secs_f64())]
    Stalled(Duration),
}

impl WriteError {
    /// Whether the peer had closed the connection (a reset or a broken pipe): its goodbye or its
    /// exit, which the reader reports the same way when it sees the end first.
    pub(super) fn peer_closed(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        matches!(self, WriteError::Io(e) if matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted))
    }
}

/// Seals and writes what the handles queue, batching what is ready into one write. Ends after the
/// goodbye (`Ok`), when every handle is gone (`Ok`), or on a fault (`Err` with why). A write that
/// makes no progress for `stall` means the peer stopped reading.
pub(super) async fn write_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    mut sealer: Sealer,
    mut sock: OwnedWriteHalf,
    stall: Duration,
) -> Result<(), WriteError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut size = batch[0].plain.len();
        while size < WRITE_BATCH && !batch.last().is_some_and(|o| o.last) {
            match rx.try_recv() {
                Ok(next) => {
                    size += next.plain.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        buf.clear();
        let mut last = false;
        for out in &batch {
            sealer.seal(&mut buf, &out.plain)?;
            last |= out.last;
        }
        match tokio::time::timeout(stall, sock.write_all(&buf)).await {
            Ok(result) => result?,
            Err(_) => return Err(WriteError::Stalled(stall)),
        }
        // Their budget goes back once their bytes are in the socket.
        drop(batch);
        if last {
            let _ = tokio::time::timeout(stall, sock.shutdown()).await;
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::WriteError;
    use std::io::{Read, Write};

    /// Writing to a peer that closed its end fails as "the peer closed", not as a fault.
    #[test]
    fn a_write_to_a_peer_that_closed_is_the_peer_closing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        ours.write_all(b"unread").unwrap();
        let mut first = [0u8; 1];
        theirs.read_exact(&mut first).unwrap();
        drop(theirs);
        let failed = (0..1000).find_map(|_| ours.write_all(&[0u8; 4096]).err()).expect("a write fails");
        let error = WriteError::Io(failed);
        assert!(error.peer_closed(), "{error}");
        assert!(!WriteError::Stalled(std::time::Duration::from_secs(1)).peer_closed());
        assert!(!WriteError::Io(std::io::Error::other("disk on fire")).peer_closed());
    }
}
