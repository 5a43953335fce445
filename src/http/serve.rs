//! The accept loop: HTTP/1.1 (keep-alive) on every accepted TCP connection, with the limits that
//! keep slow or numerous clients from holding the server: a header-read timeout and a cap on open
//! connections. Each request carries its peer's address as `ConnectInfo<SocketAddr>`; shutdown
//! stops accepting and lets in-flight requests finish.
//!
//! HTTP/1.1 only, as `axum::serve` served it here (axum's `http2` feature is off); nothing uses
//! protocol upgrades, so connections are served without them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long and how many clients may hold the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection that has not sent a complete request head this long after it opened, or after
    /// its previous response (keep-alive), is closed.
    pub header_read_timeout: Duration,
    /// Open client connections at most; while this many are open, no new one is accepted (they
    /// wait in the kernel's listen backlog).
    pub max_connections: usize,
}

/// At most one warning about the connection cap per this interval.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, closes idle
/// connections, lets in-flight requests finish and returns when every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    let mut last_warning: Option<Instant> = None;
    loop {
        // A slot first: at the cap, stop accepting, so new clients wait in the backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if last_warning.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        api.max_connections = limits.max_connections,
                        "connection limit reached: new connections wait until one closes \
                         (api.max_connections); logged at most once a minute"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // E.g. out of file descriptors: retry when some may have been closed.
                        tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Token events are small writes: never hold them back waiting for an ACK (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), with_peer(router.clone(), peer)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                if e.is_timeout() {
                    tracing::debug!(%peer, "closed a connection that sent no complete request head in time");
                } else {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The router as one connection's service: every request carries the peer's address, as
/// `Router::into_make_service_with_connect_info::<SocketAddr>()` would give it.
fn with_peer(
    router: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send,
> + Send
+ 'static {
    let router = TowerToHyperService::new(router);
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&router, request)
    })
}

/// Errors of one connection that has gone before it was accepted; the next accept may succeed.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{Notify, oneshot};

    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 8,
    };

    /// Serves `router` on a loopback port; the sender stops it, the handle tells when it returned.
    async fn start(router: Router) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, LIMITS, async move {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    /// Sends one request that closes its connection and reads the whole answer.
    async fn exchange(stream: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (addr, _stop, _server) = start(router).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let me = stream.local_addr().unwrap();
        let answer = exchange(&mut stream, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{me}")), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_waits_for_the_request_in_flight() {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (handler_entered, handler_release) = (entered.clone(), release.clone());
        let router = Router::new().route(
            "/slow",
            get(move || async move {
                handler_entered.notify_one();
                handler_release.notified().await;
                "finished"
            }),
        );
        let (addr, stop, server) = start(router).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        let idle = TcpStream::connect(addr).await.unwrap();
        let in_flight = tokio::spawn(async move { exchange(&mut busy, "/slow").await });
        entered.notified().await;

        stop.send(()).unwrap();
        // The idle connection is closed; the server waits for the request in flight.
        let mut idle = idle;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        assert!(!server.is_finished());
        // No new connection is served any more.
        assert!(TcpStream::connect(addr).await.is_err());

        release.notify_one();
        let answer = in_flight.await.unwrap();
        assert!(answer.ends_with("finished"), "{answer}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns once its last connection closed")
            .unwrap();
    }
}
