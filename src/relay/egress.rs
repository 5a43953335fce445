//! The egress proxy: the one way an agent reaches anything but the model, and only the hosts
//! `isolation.egress_allow` names. An HTTP proxy that takes `CONNECT host:port` (https, tunnelled
//! as it is) and absolute-form plain HTTP requests (`GET http://host/path`, forwarded one request
//! per connection). It listens like the relay: on `127.0.0.1:<port>` and on
//! `<data_dir>/run/egress.sock`, which the sandbox binds in and forwards its own loopback port to.
//!
//! Every request must carry a live relay token as its proxy credential (`Proxy-Authorization:
//! Basic`, the password of the `HTTPS_PROXY` URL the CLI is given), so each decision is made and
//! logged for a session and a user. The service resolves names itself (the sandbox has no DNS)
//! and connects to the addresses it checked: a name never leads to a loopback, link-local or
//! unspecified address (the host's own services, cloud metadata), only an IP literal pattern
//! reaches exactly its address. Every refusal is answered without contacting the target and
//! logged at warn. Every stage is bounded: open connections (in all and per session), the request
//! head's size and read time, name resolution, connecting, and a tunnel's idle time.
//!
//! What it cannot see: a tunnel to an allowed address carries whatever the client sends
//! (another `Host` or SNI on a shared front end reaches what that front end serves).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Binding, Grant, Relay, RelayError, token_key};
use crate::domain::SessionId;
use crate::domain::egress::{EgressRules, is_internal};

/// The socket's file name under the run directory.
const SOCKET_NAME: &str = "egress.sock";

/// The user name in the proxy URL the CLI gets (the token is the password).
const PROXY_USER: &str = "cah";

/// The realm a 407 names.
const REALM: &str = "claude-agent-http egress";

/// A request head larger than this is refused (431).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Header lines a request head may have.
const MAX_HEADERS: usize = 100;

/// How long a client may take to send its whole request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long resolving a name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to one address of the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel or forwarded request in which nothing moved either way this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long writing a refusal may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Open client connections at most (beyond them, new ones wait in the listen backlog).
const MAX_CONNECTIONS: usize = 512;

/// Open connections one session may hold; more are refused (429).
const MAX_PER_SESSION: usize = 64;

/// Headers that belong to one hop and are not forwarded on a plain HTTP request (the body's own
/// framing, `Content-Length` and `Transfer-Encoding`, passes unchanged with the body).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// What the egress proxy needs to start.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// What may be reached (not empty: an empty list runs no proxy).
    pub rules: EgressRules,
    /// Where the unix socket goes (`<data_dir>/run`, shared with the relay's).
    pub run_dir: PathBuf,
}

/// The running proxy: its listeners run in the background.
#[derive(Debug, Clone)]
pub struct Egress {
    address: SocketAddr,
    socket_path: PathBuf,
}

impl Egress {
    /// Binds `127.0.0.1:0` and `<run_dir>/egress.sock` and serves both in the background; a
    /// request's proxy credential must be a live token of `relay`.
    pub async fn start(settings: EgressSettings, relay: &Relay) -> Result<Egress, RelayError> {
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| RelayError::Listen {
                what: "127.0.0.1:0 (egress proxy)".into(),
                source,
            })?;
        let address = tcp.local_addr().map_err(|source| RelayError::Listen {
            what: "127.0.0.1:0 (egress proxy)".into(),
            source,
        })?;
        let socket_path = settings.run_dir.join(SOCKET_NAME);
        let unix =
            super::bind_socket(&settings.run_dir, &socket_path).map_err(|source| RelayError::Listen {
                what: socket_path.display().to_string(),
                source,
            })?;
        let proxy = Arc::new(Proxy {
            rules: settings.rules,
            relay: relay.clone(),
            per_session: Mutex::default(),
        });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(accept_loop(
            Listener::Tcp(tcp),
            proxy.clone(),
            slots.clone(),
            None,
        ));
        tokio::spawn(accept_loop(
            Listener::Unix(unix),
            proxy.clone(),
            slots.clone(),
            None,
        ));
        // From now on every bound token the relay issues gets a proxy socket of its own.
        if relay.shared.egress.set(BoundEgress { proxy, slots }).is_err() {
            tracing::warn!("a second egress proxy on one relay: bound tokens' sockets stay with the first");
        }
        tracing::info!(
            egress.listen = %address,
            egress.socket = %socket_path.display(),
            "the egress proxy is listening"
        );
        Ok(Egress { address, socket_path })
    }

    /// Where it listens on the host's loopback.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The unix socket serving the same proxy (`<data_dir>/run/egress.sock`).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

/// The proxy URL a CLI holding `token` is given (`HTTPS_PROXY`, `HTTP_PROXY`): the token is the
/// proxy password (tokens are URL-safe), which clients (curl, git, npm, pip) send as
/// `Proxy-Authorization: Basic`.
pub fn proxy_url(address: SocketAddr, token: &str) -> String {
    format!("http://{PROXY_USER}:{token}@{address}")
}

/// Serves bound tokens' own proxy sockets (the relay opens one with each bound token).
pub(super) struct BoundEgress {
    proxy: Arc<Proxy>,
    slots: Arc<Semaphore>,
}

impl BoundEgress {
    /// Serves `listener`, which takes `binding`'s token and no other, until the handle aborts.
    pub(super) fn serve(
        &self,
        listener: tokio::net::UnixListener,
        binding: Binding,
    ) -> tokio::task::AbortHandle {
        let task = accept_loop(
            Listener::Unix(listener),
            self.proxy.clone(),
            self.slots.clone(),
            Some(binding),
        );
        tokio::spawn(task).abort_handle()
    }
}

/// What every connection's handler shares.
struct Proxy {
    rules: EgressRules,
    relay: Relay,
    per_session: Mutex<HashMap<SessionId, usize>>,
}

/// A session's share of the per-session cap, given back when the connection ends.
struct SessionSlot<'a> {
    proxy: &'a Proxy,
    session: SessionId,
}

impl Proxy {
    fn take_slot(&self, session: SessionId) -> Option<SessionSlot<'_>> {
        let mut open = self.per_session.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(session).or_default();
        if *count >= MAX_PER_SESSION {
            return None;
        }
        *count += 1;
        Some(SessionSlot { proxy: self, session })
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut open = self.proxy.per_session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.session) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.session);
            }
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Accepts connections while a slot is free, each served on a task of its own (`binding`: the
/// one token a session's own socket takes).
async fn accept_loop(listener: Listener, proxy: Arc<Proxy>, slots: Arc<Semaphore>, binding: Option<Binding>) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let proxy = proxy.clone();
        let accepted = match &listener {
            Listener::Tcp(tcp) => tcp.accept().await.map(|(stream, _)| {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    serve(stream, &proxy, binding).await;
                    drop(slot);
                });
            }),
            Listener::Unix(unix) => unix.accept().await.map(|(stream, _)| {
                tokio::spawn(async move {
                    serve(stream, &proxy, binding).await;
                    drop(slot);
                });
            }),
        };
        if let Err(e) = accepted
            && !matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
            )
        {
            // E.g. out of file descriptors: retry when some may have been closed.
            tracing::error!(error = %e, "the egress proxy cannot accept a connection; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Its length in the buffer (what follows is body or tunnel data).
    len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// An answer that ends the connection.
#[derive(Debug)]
struct Refusal {
    status: u16,
    reason: &'static str,
    body: String,
    /// Extra header lines (each ending in CRLF).
    headers: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, body: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            body: body.into(),
            headers: String::new(),
        }
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// As the client named it (an IPv6 address in brackets).
    host: String,
    port: u16,
    /// Plain HTTP: the request line's path and query (origin form); `None` for a tunnel.
    path: Option<String>,
}

/// One client connection: one request, then a tunnel (CONNECT) or the forwarded exchange.
async fn serve<S>(mut client: S, proxy: &Proxy, binding: Option<Binding>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = Vec::with_capacity(1024);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut buf)).await {
        Err(_) => {
            answer(
                &mut client,
                &Refusal::new(408, "Request Timeout", "no complete request head in time\n"),
            )
            .await;
            return;
        }
        Ok(Err(refusal)) => {
            answer(&mut client, &refusal).await;
            return;
        }
        Ok(Ok(head)) => head,
    };
    let Some((key, grant)) = authenticate(&head, &proxy.relay) else {
        tracing::warn!(
            egress.target = %truncated(&head.target),
            "egress proxy request without a live session token refused"
        );
        answer(&mut client, &unauthenticated()).await;
        return;
    };
    if let Some(binding) = binding
        && key != binding.key
    {
        // A live token learnt from another session: bound tokens work on their own socket only.
        tracing::warn!(
            session.id = %binding.session,
            egress.token_session = %grant.session,
            egress.target = %truncated(&head.target),
            "the egress proxy refused another session's token on a session's own socket"
        );
        answer(&mut client, &unauthenticated()).await;
        return;
    }
    let Some(_slot) = proxy.take_slot(grant.session) else {
        tracing::warn!(
            session.id = %grant.session,
            user.id = %grant.user_id,
            egress.max_per_session = MAX_PER_SESSION,
            "egress proxy connection refused: the session holds too many"
        );
        answer(
            &mut client,
            &Refusal::new(429, "Too Many Requests", "too many open proxy connections\n"),
        )
        .await;
        return;
    };
    let target = match parse_target(&head) {
        Ok(target) => target,
        Err(refusal) => {
            tracing::warn!(
                session.id = %grant.session,
                user.id = %grant.user_id,
                egress.method = %truncated(&head.method),
                egress.target = %truncated(&head.target),
                "egress proxy request refused: not a proxy request this proxy takes"
            );
            answer(&mut client, &refusal).await;
            return;
        }
    };
    let upstream = match open(proxy, &grant, &target).await {
        Ok(upstream) => upstream,
        Err(refusal) => {
            answer(&mut client, &refusal).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    let rest = buf[head.len..].to_vec();
    let start = match &target.path {
        None => {
            let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
            client.write_all(established).await.map(|()| rest)
        }
        Some(path) => {
            let mut out = forwarded_head(&head, &target, path);
            out.extend_from_slice(&rest);
            Ok(out)
        }
    };
    let Ok(first) = start else { return };
    if !first.is_empty() && upstream.write_all(&first).await.is_err() {
        return;
    }
    tracing::debug!(
        session.id = %grant.session,
        user.id = %grant.user_id,
        egress.host = %target.host,
        egress.port = target.port,
        egress.tunnel = target.path.is_none(),
        "egress allowed"
    );
    let (sent, received) = tunnel(client, upstream, IDLE_TIMEOUT).await;
    tracing::debug!(
        session.id = %grant.session,
        egress.host = %target.host,
        egress.port = target.port,
        egress.bytes_sent = sent,
        egress.bytes_received = received,
        "egress connection closed"
    );
}

/// The answer to a request without a token this socket takes.
fn unauthenticated() -> Refusal {
    Refusal {
        headers: format!("Proxy-Authenticate: Basic realm=\"{REALM}\"\r\n"),
        ..Refusal::new(
            407,
            "Proxy Authentication Required",
            "this proxy serves the service's agents only: the proxy URL's password must be the \
             agent's own token\n",
        )
    }
}

/// At most 200 characters of a client's text, for the log.
fn truncated(text: &str) -> &str {
    text.char_indices().nth(200).map_or(text, |(end, _)| &text[..end])
}

/// Reads until the end of the request head (bounded) and parses it.
async fn read_head<S: AsyncRead + Unpin>(client: &mut S, buf: &mut Vec<u8>) -> Result<Head, Refusal> {
    let mut chunk = [0u8; 4096];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|_| Refusal::new(400, "Bad Request", "the connection failed\n"))?;
        if n == 0 {
            return Err(Refusal::new(
                400,
                "Bad Request",
                "the request head is incomplete\n",
            ));
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[searched_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Refusal::new(
                431,
                "Request Header Fields Too Large",
                "the request head is too large\n",
            ));
        }
    }
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let bad = |why: &str| Refusal::new(400, "Bad Request", format!("{why}\n"));
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(bad("the request head is incomplete")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                "Request Header Fields Too Large",
                "too many header lines\n",
            ));
        }
        Err(e) => return Err(bad(&format!("the request head is malformed ({e})"))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(Refusal::new(
            431,
            "Request Header Fields Too Large",
            "the request head is too large\n",
        ));
    }
    Ok(Head {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        len,
    })
}

/// The live token the request presents as its proxy password (or user name): its key and to
/// whom it was issued.
fn authenticate(head: &Head, relay: &Relay) -> Option<([u8; 32], Grant)> {
    let value = std::str::from_utf8(head.header("proxy-authorization")?).ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    let token = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        let (user, password) = pair.split_once(':').unwrap_or((pair.as_str(), ""));
        // Clients that put only one part in the URL put it in the user name.
        if password.is_empty() {
            user.to_string()
        } else {
            password.to_string()
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        encoded.trim().to_string()
    } else {
        return None;
    };
    let key = token_key(&token);
    relay.shared.grant_of(&key).map(|grant| (key, grant))
}

/// The target of a CONNECT (`host:port`) or of an absolute-form plain HTTP request.
fn parse_target(head: &Head) -> Result<Target, Refusal> {
    let bad = |why: &str| Refusal::new(400, "Bad Request", format!("{why}\n"));
    if head.method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) =
            split_authority(&head.target, None).ok_or_else(|| bad("CONNECT needs a host:port target"))?;
        return Ok(Target {
            host,
            port,
            path: None,
        });
    }
    let target = head.target.as_str();
    let scheme_end = target.find("://").unwrap_or(0);
    let scheme = &target[..scheme_end];
    if scheme.eq_ignore_ascii_case("https") {
        return Err(bad("https goes through CONNECT (use the proxy as HTTPS_PROXY)"));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad(
            "this is a proxy: send CONNECT host:port, or a plain HTTP request with an absolute \
             http:// URL",
        ));
    }
    let rest = &target[scheme_end + 3..];
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not forwarded"));
    }
    let (host, port) =
        split_authority(authority, Some(80)).ok_or_else(|| bad("the URL has no valid host"))?;
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok(Target {
        host,
        port,
        path: Some(path),
    })
}

/// `host[:port]` (an IPv6 host in brackets), lowercased; the port is required without a default.
fn split_authority(authority: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, tail) = authority.split_at(end + 1);
        match tail.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if tail.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0)?,
        None => default_port?,
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Checks the target against the rules, resolves it and connects; a refusal is logged here.
async fn open(proxy: &Proxy, grant: &Grant, target: &Target) -> Result<TcpStream, Refusal> {
    let refuse = |why: &'static str, status: u16, reason: &'static str| {
        tracing::warn!(
            session.id = %grant.session,
            user.id = %grant.user_id,
            egress.host = %target.host,
            egress.port = target.port,
            egress.reason = why,
            "egress refused"
        );
        Refusal::new(
            status,
            reason,
            format!("egress to {}:{} refused: {why}\n", target.host, target.port),
        )
    };
    let Some(pattern) = proxy.rules.allowing(&target.host, target.port) else {
        return Err(refuse(
            "not in the service's egress allow-list (isolation.egress_allow)",
            403,
            "Forbidden",
        ));
    };
    let addresses: Vec<SocketAddr> = if pattern.is_ip_literal() {
        let literal = target.host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = literal
            .parse()
            .map_err(|_| refuse("not an address", 400, "Bad Request"))?;
        vec![SocketAddr::new(ip, target.port)]
    } else {
        let host = target.host.trim_end_matches('.');
        let resolved =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, target.port))).await;
        let resolved: Vec<SocketAddr> = match resolved {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(_)) | Err(_) => {
                return Err(refuse("the name does not resolve", 502, "Bad Gateway"));
            }
        };
        let external: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|a| !is_internal(a.ip()))
            .collect();
        if external.is_empty() {
            return Err(refuse(
                "the name resolves only to internal addresses (loopback, link-local, unspecified); \
                 allow an IP literal to reach such an address",
                403,
                "Forbidden",
            ));
        }
        external
    };
    for address in &addresses {
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            return Ok(stream);
        }
    }
    Err(refuse("the target cannot be reached", 502, "Bad Gateway"))
}

/// The head of a plain HTTP request as the target receives it: origin form, `Host` from the URL,
/// no proxy or hop-by-hop headers (nor those `Connection` names), and `Connection: close` (one
/// request per connection, each one checked).
fn forwarded_head(head: &Head, target: &Target, path: &str) -> Vec<u8> {
    let named_by_connection: Vec<String> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("proxy-connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::with_capacity(head.len);
    out.extend_from_slice(format!("{} {path} HTTP/1.1\r\n", head.method).as_bytes());
    let host = if target.port == 80 {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) || named_by_connection.contains(&lower) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Writes a refusal and closes.
async fn answer<S: AsyncWrite + Unpin>(client: &mut S, refusal: &Refusal) {
    let text = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{}\r\n{}",
        refusal.status,
        refusal.reason,
        refusal.body.len(),
        refusal.headers,
        refusal.body
    );
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        client.write_all(text.as_bytes()).await?;
        client.shutdown().await
    })
    .await;
}

/// When anything last moved through a tunnel, in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copies one direction until its end (then half-closes the other side) or the tunnel's idle
/// limit; the bytes copied.
async fn pump<R, W>(mut from: R, mut to: W, activity: &Activity, idle: Duration) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            () = activity.idle_for(idle) => return Err(io::ErrorKind::TimedOut.into()),
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        activity.touch();
        tokio::time::timeout(idle, to.write_all(&buf[..n]))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        activity.touch();
        total += n as u64;
    }
}

/// Both directions until both ended, or either failed or idled out; (sent, received) bytes.
async fn tunnel<S, U>(client: S, upstream: U, idle: Duration) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let up = pump(client_read, upstream_write, &activity, idle);
    let down = pump(upstream_read, client_write, &activity, idle);
    tokio::pin!(up, down);
    let (mut sent, mut received) = (None, None);
    while sent.is_none() || received.is_none() {
        tokio::select! {
            result = &mut up, if sent.is_none() => match result {
                Ok(n) => sent = Some(n),
                Err(_) => break,
            },
            result = &mut down, if received.is_none() => match result {
                Ok(n) => received = Some(n),
                Err(_) => break,
            },
        }
    }
    (sent.unwrap_or(0), received.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> Head {
        Head {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            len: 0,
        }
    }

    #[test]
    fn targets_come_from_connect_authorities_and_absolute_http_urls() {
        let t = |method, target| parse_target(&head(method, target));
        assert_eq!(
            t("CONNECT", "Registry.npmjs.org:443").unwrap(),
            Target {
                host: "registry.npmjs.org".into(),
                port: 443,
                path: None
            }
        );
        assert_eq!(t("CONNECT", "[::1]:8443").unwrap().host, "[::1]");
        assert!(t("CONNECT", "example.org").is_err(), "CONNECT needs a port");
        assert!(t("CONNECT", "::1:443").is_err());
        assert!(t("CONNECT", "example.org:0").is_err());
        let plain = t("GET", "http://example.org/a/b?c=d").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.path.as_deref()),
            ("example.org", 80, Some("/a/b?c=d"))
        );
        assert_eq!(
            t("GET", "HTTP://127.0.0.1:8080").unwrap().path.as_deref(),
            Some("/")
        );
        assert_eq!(t("GET", "http://h.org?q").unwrap().path.as_deref(), Some("/?q"));
        assert_eq!(t("GET", "https://example.org/").unwrap_err().status, 400);
        assert_eq!(t("GET", "/relative").unwrap_err().status, 400);
        assert_eq!(t("GET", "http://user:pw@example.org/").unwrap_err().status, 400);
    }

    #[test]
    fn a_forwarded_head_drops_proxy_and_hop_by_hop_headers_and_closes() {
        let mut head = head("POST", "http://example.org:8080/x");
        head.headers = vec![
            ("Host".into(), b"evil.example".to_vec()),
            ("Proxy-Authorization".into(), b"Basic c2VjcmV0".to_vec()),
            ("Connection".into(), b"keep-alive, X-Private".to_vec()),
            ("X-Private".into(), b"1".to_vec()),
            ("Content-Length".into(), b"3".to_vec()),
            ("Accept".into(), b"*/*".to_vec()),
        ];
        let target = parse_target(&head).unwrap();
        let out = String::from_utf8(forwarded_head(&head, &target, "/x")).unwrap();
        assert_eq!(
            out,
            "POST /x HTTP/1.1\r\nHost: example.org:8080\r\nContent-Length: 3\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_request_head_is_read_whole_and_bounded() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        far.write_all(b"CONNECT a.org:443 HTTP/1.1\r\nHost: a.org:443\r\n\r\nTLS")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let head = read_head(&mut near, &mut buf).await.unwrap();
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("CONNECT", "a.org:443")
        );
        assert_eq!(&buf[head.len..], b"TLS");
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let long = format!(
            "GET http://a.org/ HTTP/1.1\r\nX: {}\r\n",
            "y".repeat(MAX_HEAD_BYTES)
        );
        far.write_all(long.as_bytes()).await.unwrap();
        let refused = read_head(&mut near, &mut Vec::new()).await.unwrap_err();
        assert_eq!(refused.status, 431);
    }

    /// A proxy over a real relay (its tokens) in a temporary run directory.
    async fn proxy(rules: &[&str]) -> (Proxy, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let settings = super::super::RelaySettings {
            upstream: "http://127.0.0.1:9".into(),
            credential: super::super::UpstreamCredential::default(),
            run_dir: dir.path().join("run"),
            pricing: Default::default(),
            budgets: Default::default(),
        };
        let usage = std::sync::Arc::new(crate::store::MemoryStore::new(0));
        let relay = Relay::start(settings, usage).await.unwrap();
        let proxy = Proxy {
            rules: EgressRules::parse(rules).unwrap(),
            relay,
            per_session: Mutex::default(),
        };
        (proxy, dir)
    }

    /// Serves one connection whose client sends `request` and then waits; the whole answer.
    async fn exchange(proxy: &Proxy, request: &str) -> String {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        far.write_all(request.as_bytes()).await.unwrap();
        let (_, answer) = tokio::join!(serve(near, proxy, None), async {
            let mut answer = String::new();
            far.read_to_string(&mut answer).await.unwrap();
            answer
        });
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_no_whole_head_in_time_gets_408() {
        let (proxy, _dir) = proxy(&["example.org"]).await;
        let answer = exchange(&proxy, "CONNECT example.org:443 HTTP/1.1\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }

    #[tokio::test]
    async fn only_a_live_token_opens_the_proxy_and_only_to_an_allowed_host() {
        let (proxy, _dir) = proxy(&["example.org"]).await;
        let token = proxy.relay.issue(SessionId::new(), "alice");
        let basic = |credential: &str| base64::engine::general_purpose::STANDARD.encode(credential);
        let connect = |host: &str, credential: &str| {
            format!("CONNECT {host} HTTP/1.1\r\nProxy-Authorization: Basic {credential}\r\n\r\n")
        };
        let live = basic(&format!("cah:{}", token.secret()));
        let answer = exchange(&proxy, &connect("example.com:443", &live)).await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
        assert!(answer.contains("egress to example.com:443 refused"), "{answer}");
        let answer = exchange(&proxy, &connect("example.org:8443", &live)).await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "another port: {answer}");
        for credential in [basic("cah:cah_relay_forged"), basic("cah:"), "%%%".into()] {
            let answer = exchange(&proxy, &connect("example.org:443", &credential)).await;
            assert!(answer.starts_with("HTTP/1.1 407 "), "{credential}: {answer}");
        }
        let secret = token.secret().to_string();
        drop(token);
        let revoked = basic(&format!("cah:{secret}"));
        let answer = exchange(&proxy, &connect("example.org:443", &revoked)).await;
        assert!(answer.starts_with("HTTP/1.1 407 "), "a revoked token: {answer}");
    }

    #[tokio::test]
    async fn a_session_holds_at_most_its_share_of_connections() {
        let (proxy, _dir) = proxy(&["example.org"]).await;
        let (alice, bob) = (SessionId::new(), SessionId::new());
        let mut held: Vec<_> = (0..MAX_PER_SESSION)
            .map(|_| proxy.take_slot(alice).unwrap())
            .collect();
        assert!(proxy.take_slot(alice).is_none(), "alice is over her share");
        assert!(proxy.take_slot(bob).is_some(), "bob is not limited by alice");
        held.pop();
        assert!(
            proxy.take_slot(alice).is_some(),
            "a closed connection frees its slot"
        );
        drop(held);
        assert!(
            proxy
                .per_session
                .lock()
                .unwrap()
                .get(&alice)
                .is_none_or(|n| *n == 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_carries_both_ways_and_closes_when_nothing_moves_for_its_idle_time() {
        let (near_client, mut client) = tokio::io::duplex(1024);
        let (near_upstream, mut upstream) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(tunnel(near_client, near_upstream, Duration::from_secs(60)));
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        upstream.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!");
        // Both ends stay open and silent: the idle limit ends the tunnel.
        let (sent, received) = tunnel.await.unwrap();
        assert_eq!(
            (sent, received),
            (0, 0),
            "an idled-out tunnel reports nothing finished"
        );
        let mut rest = Vec::new();
        assert_eq!(
            client.read_to_end(&mut rest).await.unwrap(),
            0,
            "the client is closed"
        );
    }
}
