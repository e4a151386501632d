//! The API's listener: what a client may hold before it has said anything useful.
//!
//! actix-web's `HttpServer` bounds connections as a whole and the time to send a request head, but
//! not per client address, so one address that opens connections and never finishes TLS, or never
//! finishes its headers, takes every slot for as long as the deadlines allow, and real calls wait
//! in the backlog. The API is served here with the same parts (actix-server's accept loop and
//! connection cap, actix-tls's rustls acceptor, actix-http's HTTP/1.1 service over the actix-web
//! app) and one more step in front: a connection is counted against its address from accept to
//! close, and one beyond `per_address` is closed at once (one log line per 10 s says how many).
//!
//! Each connection then has `handshake_timeout` to finish TLS and `header_timeout` to send its
//! first request head; an idle keep-alive connection is closed after 5 s.

use actix_http::{HttpService, KeepAlive, Protocol};
use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt};
use actix_web::dev::{AppConfig, ServerHandle};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What clients of the API may hold.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Connections served at once (more wait in the kernel's backlog).
    pub max_connections: usize,
    /// Connections of one address at once (more are closed at once).
    pub per_address: u32,
    /// Time to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send the first request head.
    pub header_timeout: Duration,
}

/// Connections per address, shared by the server's worker(s).
struct PerAddress {
    held: Mutex<HashMap<IpAddr, u32>>,
    refused: Mutex<wazuh_cluster_actors::throttle::Throttle>,
}

impl PerAddress {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`, if it holds fewer than `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut held = self.held();
        let n = held.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { table: self.clone(), ip })
    }
}

/// A connection's place among its address's; given back when the connection is dropped.
struct Slot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.table.held();
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A TCP connection that holds its address's slot for as long as it lives (TLS and HTTP included:
/// they own it).
pub struct Counted {
    io: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl ActixStream for Counted {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Ready>> {
        ActixStream::poll_read_ready(&self.io, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.io, cx)
    }
}

/// The first step of every connection: counted against its address, or closed at once.
fn admit(
    per_address: Arc<PerAddress>,
    max: u32,
    node: String,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (Counted, Option<SocketAddr>), Error = (), InitError = ()> + Clone
{
    fn_service(move |io: TcpStream| {
        let (per_address, node) = (per_address.clone(), node.clone());
        async move {
            let peer = io.peer_addr().ok();
            let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
            let Some(slot) = per_address.take(ip, max) else {
                let said = per_address.refused.lock().unwrap_or_else(|p| p.into_inner()).allow();
                if let Some(unsaid) = said {
                    log::warn!(node = node.as_str(); "API: {} connections from {ip} closed at once: that address already has {max} connections (api.max_connections_per_address)", unsaid + 1);
                }
                return Err(());
            };
            // Each answer goes out at once: without it, a TLS response's records wait for the
            // client's delayed ACK (about 40 ms per request).
            let _ = io.set_nodelay(true);
            Ok((Counted { io, _slot: slot }, peer))
        }
    })
}

impl Counted {
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.io.peer_addr().ok()
    }
}

/// A connection, ready for the HTTP service.
type Ready3<T> = (T, Protocol, Option<SocketAddr>);

/// Serves `app` (an actix-web `App` factory) on `listener` in the background, over TLS when
/// `tls` is given, within `limits`. Returns a handle to stop it.
pub fn serve<F, I, S>(
    listener: std::net::TcpListener,
    app: F,
    tls: Option<rustls::ServerConfig>,
    limits: ApiLimits,
    node: &str,
) -> std::io::Result<ServerHandle>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, actix_http::Request>,
    S: ServiceFactory<
            actix_http::Request,
            Config = AppConfig,
            Response = actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    S::Future: 'static,
    S::Service: 'static,
    <S::Service as actix_service::Service<actix_http::Request>>::Future: 'static,
{
    let addr = listener.local_addr()?;
    let per_address = Arc::new(PerAddress {
        held: Mutex::default(),
        refused: Mutex::new(wazuh_cluster_actors::throttle::Throttle::new(Duration::from_secs(10))),
    });
    let node = node.to_string();
    let builder = actix_server::Server::build()
        .workers(1)
        .max_concurrent_connections(limits.max_connections)
        .backlog(1024)
        .disable_signals()
        .shutdown_timeout(1);
    let builder = builder.listen("api", listener, move || {
        let app = app().into_factory().map_err(|e: actix_web::Error| e.error_response());
        // (A macro: the builder's stream type differs between the two arms.)
        macro_rules! http {
            () => {
                HttpService::build()
                    .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                    .client_request_timeout(limits.header_timeout)
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .local_addr(addr)
            };
        }
        // The app reads no server configuration (hosts are checked by its guard).
        let app = map_config(app, |_| AppConfig::default());
        let first = admit(per_address.clone(), limits.per_address, node.clone());
        match tls.clone() {
            Some(config) => {
                let mut acceptor = actix_tls::accept::rustls_0_23::Acceptor::new(config);
                acceptor.set_handshake_timeout(limits.handshake_timeout);
                actix_service::boxed::factory(
                    first
                        .map(|(io, _)| io)
                        .and_then(acceptor.map_err(|_| ()))
                        .map(|tls: actix_tls::accept::rustls_0_23::TlsStream<Counted>| {
                            let peer = tls.get_ref().0.peer_addr();
                            (tls, Protocol::Http1, peer)
                        })
                        .and_then(http!().finish(app).map_err(|_| ())),
                )
            }
            None => actix_service::boxed::factory(
                first
                    .map(|(io, peer)| -> Ready3<Counted> { (io, Protocol::Http1, peer) })
                    .and_then(http!().finish(app).map_err(|_| ())),
            ),
        }
    })?;
    let mut server = builder.run();
    let handle = server.handle();
    // Its first poll starts its threads (acceptor, worker): made here rather than on the event
    // loop's next turn, they take the process's priority, not the event loop's (a worker's lowers
    // its own once the node is started: node.event_loop_nice), as threads inherit it.
    use futures_util::FutureExt;
    if let Some(ended) = (&mut server).now_or_never() {
        ended?;
        return Err(std::io::Error::other("the API server stopped as it started"));
    }
    actix_rt::spawn(server);
    Ok(handle)
}
