//! Stories of slow and numerous clients: a connection that never finishes its request head is
//! closed after `api.header_read_timeout_seconds`; at `api.max_connections` open connections a new
//! client waits until one closes, and is then served; streams outlive the header timeout and a
//! shutdown still ends them. No assertion here depends on the machine being fast: waits are
//! generous upper bounds, and "not yet answered" is only ever checked while it must hold.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestServer;
use crate::support::agent::{AgentServer, delta_text};

/// Far longer than any close or answer the stories wait for takes, however slow the machine.
const GENEROUS: Duration = Duration::from_secs(15);

/// A client that opens a new connection for every request. With a header timeout of 1 s, a pooled
/// connection idles into it at any moment, and a request sent on it just as the server closes it
/// would fail: every HTTP client shares that race with every keep-alive timeout.
/// It sends the server's admin key when the server requires authentication.
fn unpooled_client(server: &TestServer) -> reqwest::Client {
    claude_agent_http::tls::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &server.admin_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A raw TCP connection to the server, for clients no HTTP library would imitate.
async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent; panics
/// if it is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {limit:?}; it sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let mut server = TestServer::start("api:\n  header_read_timeout_seconds: 1\n").await;
    server.client = unpooled_client(&server);
    let opened = Instant::now();
    // One sends half a request head and stops; one connects and sends nothing; one asks for
    // /livez, gets its answer and then keeps the connection without a next request.
    let mut partial = connect(&server).await;
    partial
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut silent = connect(&server).await;
    let mut kept_alive = connect(&server).await;
    kept_alive
        .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    // Meanwhile, a client that sends its request on a fresh connection is served.
    let response = server.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);

    let sent = read_until_closed(&mut partial, GENEROUS).await;
    assert_eq!(sent, "", "nothing is answered to an unfinished head");
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "closed before the timeout: {:?}",
        opened.elapsed()
    );
    assert_eq!(read_until_closed(&mut silent, GENEROUS).await, "");
    let answer = read_until_closed(&mut kept_alive, GENEROUS).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    // The server goes on serving new connections.
    let response = server.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_until_one_closes() {
    // The held connections must not time out during the story.
    let mut server =
        TestServer::start("api:\n  max_connections: 2\n  header_read_timeout_seconds: 600\n").await;
    // Two clients take both connections and send nothing (a third is not accepted before them:
    // the kernel queues connections in order).
    let first = connect(&server).await;
    let mut second = connect(&server).await;
    let mut third = connect(&server).await;
    third
        .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();

    // While both are held, the third is not answered (it waits in the listen backlog).
    let mut early = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), third.read(&mut early)).await;
    assert!(
        read.is_err(),
        "the third client got {read:?} while two connections were held"
    );

    // One leaves: the third is served.
    drop(first);
    let answer = read_until_closed(&mut third, GENEROUS).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    // The operator is told, once, however often the cap is met.
    let log = server.log();
    let warnings = log.matches("connection limit reached").count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("api.max_connections"), "{log}");

    // A held idle connection does not keep a shutdown waiting; it is closed.
    assert_eq!(server.stop(), Some(0), "{}", server.log());
    assert_eq!(read_until_closed(&mut second, GENEROUS).await, "");
}

#[tokio::test]
async fn streams_outlive_the_header_timeout_and_a_shutdown_still_ends_them() {
    let mut app = AgentServer::start("api:\n  header_read_timeout_seconds: 1\n").await;
    app.server.client = unpooled_client(&app.server);
    let (id, _) = app.session("alice").await;
    // Three words 1.5 s apart: the answer takes far longer than the header timeout.
    let events = app.stream(&id, "words 3 1500").await.collect().await;
    assert_eq!(events.last().unwrap().data["type"], "done", "{events:?}");
    assert_eq!(delta_text(&events), "w1 w2 w3");

    // A stream running at shutdown ends with its terminal event, and the server exits cleanly.
    let mut running = app.stream(&id, "words 100 500").await;
    running.until("text_delta").await;
    assert_eq!(app.server.stop(), Some(0), "{}", app.server.log());
    let rest = running.collect().await;
    assert_eq!(rest.last().unwrap().data["type"], "error", "{rest:?}");
}
