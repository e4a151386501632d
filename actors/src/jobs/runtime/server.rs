//! The request servers: a job that answers the peer's requests ([`Serve`]), run by [`Server`] with
//! its own health, several requests at once, and an error answer for each that fails.

use super::*;

/// Why a request could not be served; becomes the error reply's code and message.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Not now (e.g. the manifest is not computed yet): the peer may retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong: the peer must not retry it as is.
    #[error("{0}")]
    Invalid(String),
    /// Serving it failed here.
    #[error("{0}")]
    Internal(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("injected fault")]
    Injected,
    #[error("panicked: {0}")]
    Panicked(String),
}

impl ServeError {
    pub fn reply(&self) -> ErrorReply {
        let code = match self {
            ServeError::Unavailable(_) | ServeError::Store(StoreError::Stopped) => ErrorCode::Unavailable,
            ServeError::Invalid(_) => ErrorCode::Invalid,
            _ => ErrorCode::Internal,
        };
        ErrorReply { code, message: self.to_string() }
    }
}

impl From<CallError> for ServeError {
    fn from(e: CallError) -> Self {
        ServeError::Unavailable(e.to_string())
    }
}

/// A request's answer, with counts to add to the job's figures.
pub struct Served<O> {
    pub reply: O,
    pub counts: Vec<(&'static str, u64)>,
}

impl<O> Served<O> {
    pub fn reply(reply: O) -> Self {
        Self { reply, counts: Vec::new() }
    }
}

/// The work of a request server; [`Server`] runs it.
pub trait Serve: Unpin + 'static {
    type Side: Side;
    type Request: 'static;

    /// Starts serving one request. The future runs beside the other requests in flight; its
    /// output is the answer (or why there is none).
    fn serve(&mut self, request: Self::Request) -> LocalFuture<Result<Served<<Self::Side as Side>::Out>, ServeError>>;

    /// Figures beyond the counts the served requests added up.
    fn figures(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// Answers a request exactly once: with what `send` is given, or, if dropped unanswered (its job
/// stopped mid-way), with an `unavailable` error if the queue has room.
pub(super) struct Answer<S: Side> {
    conn: ConnHandle<S>,
    id: Option<RequestId>,
}

impl<S: Side> Answer<S> {
    async fn send(mut self, body: S::Out) -> Result<(), CallError> {
        match self.id.take() {
            Some(id) => self.conn.respond(id, body).await,
            None => Ok(()),
        }
    }
}

impl<S: Side> Drop for Answer<S> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.conn.try_respond_error(id, ErrorCode::Unavailable, "the job serving it stopped".into());
        }
    }
}

pub(super) fn injected_panic<T>() -> T {
    panic!("injected panic")
}

/// A request server: serves each request of type `J::Request` concurrently with the others.
pub struct Server<J: Serve> {
    name: &'static str,
    job: J,
    conn: ConnHandle<J::Side>,
    health: JobHealth,
    faults: Faults,
    totals: BTreeMap<&'static str, u64>,
    failures_logged: Throttle,
    stopped: bool,
}

impl<J: Serve> Server<J> {
    /// Starts `job` as the server `name` on `conn`, supervised; `alive` ties it to its job set.
    pub fn start(
        name: &'static str,
        job: J,
        conn: ConnHandle<J::Side>,
        settings: &ChannelSettings,
        alive: Alive,
    ) -> (Addr<Self>, JobHealth) {
        let health = JobHealth::new(name, JobKind::Server, settings.jobs.restart_backoff());
        let h = health.clone();
        let addr = crate::supervise::start(MAILBOX, Some(alive), move |_| Server {
            name,
            job,
            conn,
            health: h,
            faults: Faults::default(),
            totals: BTreeMap::new(),
            failures_logged: Throttle::new(Duration::from_secs(1)),
            stopped: false,
        });
        (addr, health)
    }

    /// The served job (for its own message handlers).
    pub fn job(&mut self) -> &mut J {
        &mut self.job
    }

    pub fn conn(&self) -> &ConnHandle<J::Side> {
        &self.conn
    }

    fn record(&mut self, counts: Vec<(&'static str, u64)>, error: Option<ServeError>, took: Duration) {
        match &error {
            None => self.health.succeeded(Some(took)),
            Some(e) => {
                self.health.failed_once(&e.to_string(), matches!(e, ServeError::Panicked(_)));
                if let Some(held) = self.failures_logged.allow() {
                    let more = if held > 0 { format!(" ({held} more since the last line)") } else { String::new() };
                    warn!(node = self.conn.node(); "job {} for {}: a request failed: {e}; answered with an error{more}",
                        self.name, self.conn.peer());
                }
            }
        }
        for (k, v) in counts {
            *self.totals.entry(k).or_default() += v;
        }
        let mut figures: Vec<(String, u64)> = self.totals.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        figures.extend(self.job.figures());
        self.health.set_figures(figures);
    }
}

impl<J: Serve> Actor for Server<J> {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if !self.stopped {
            self.health.set_state(JobState::Running);
        }
    }
}

impl<J: Serve> Supervised for Server<J> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarted();
    }
}

impl<J: Serve> Guarded for Server<J> {
    fn health(&self) -> &JobHealth {
        &self.health
    }
    fn names(&self) -> (&str, &str) {
        (self.conn.node(), self.conn.peer())
    }
}

impl<J: Serve> Handler<Request<J::Request>> for Server<J> {
    type Result = ();

    fn handle(&mut self, request: Request<J::Request>, ctx: &mut Context<Self>) {
        let Request { id, body, permit } = request;
        if self.stopped {
            // Dropped unanswered: `Answer` says so to the peer below.
            let _ = Answer { conn: self.conn.clone(), id: Some(id) };
            return;
        }
        let started = Instant::now();
        let work: LocalFuture<Result<Served<_>, ServeError>> = match self.faults.take() {
            Some(FaultKind::Fail) => Box::pin(async { Err(ServeError::Injected) }),
            // In the future, so that the request's own panic guard is what catches it.
            Some(FaultKind::Panic) => Box::pin(async { injected_panic() }),
            None => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.job.serve(body))) {
                Ok(fut) => fut,
                Err(payload) => {
                    let message = panic_message(&*payload);
                    Box::pin(async move { Err(ServeError::Panicked(message)) })
                }
            },
        };
        let answer = Answer { conn: self.conn.clone(), id: Some(id) };
        let fut = async move {
            let outcome = CatchUnwind::new(work).await.unwrap_or_else(|p| Err(ServeError::Panicked(p.0)));
            let (reply, counts, error) = match outcome {
                Ok(Served { reply, counts }) => (reply, counts, None),
                Err(e) => (J::Side::error(e.reply()), Vec::new(), Some(e)),
            };
            if let Err(e) = answer.send(reply).await {
                debug!("an answer was not sent: {e}");
            }
            // The request's share of the inbound budget goes back once its answer is queued.
            drop(permit);
            (counts, error, started.elapsed())
        };
        ctx.spawn(fut.into_actor(self).map(|(counts, error, took), act, _| act.record(counts, error, took)));
    }
}

impl<J: Serve> Handler<JobFault> for Server<J> {
    type Result = ();
    fn handle(&mut self, msg: JobFault, _: &mut Context<Self>) {
        self.faults.add(msg);
    }
}

impl<J: Serve> Handler<StopJob> for Server<J> {
    type Result = ();
    fn handle(&mut self, _: StopJob, ctx: &mut Context<Self>) {
        self.stopped = true;
        self.health.set_state(JobState::Stopped);
        ctx.stop();
    }
}
