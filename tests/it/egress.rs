//! Egress: under `isolation.profile: strict` an agent reaches nothing but the model, unless
//! `isolation.egress_allow` names a host; then the service's proxy (given to the CLI as
//! `HTTPS_PROXY`/`HTTP_PROXY`) lets exactly those hosts through and refuses, and logs, the rest.
//! The agent is the real CLI running `curl` with the Bash tool; every story asserts what the
//! target listeners received, not only what curl printed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crate::escape::{bash, strict_possible, strict_server};

/// A plain HTTP server on the host's loopback that notes every request head it receives and
/// answers `REACHED <path>`.
struct Target {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Target {
    fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(head);
                let body = format!("REACHED {path}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Target { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// A listener that counts the bytes anyone sends it.
fn counting_listener() -> (u16, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bytes = Arc::new(Mutex::new(0));
    let seen = bytes.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    *seen.lock().unwrap() += n;
                }
            });
        }
    });
    (port, bytes)
}

fn egress_yaml(allow: &[String]) -> String {
    format!("  egress_allow: {}\n", serde_json::json!(allow))
}

#[tokio::test]
async fn an_allowed_host_is_reached_through_the_proxy_and_nothing_else_is() {
    if !strict_possible() {
        return;
    }
    let target = Target::start();
    let (other_port, other_bytes) = counting_listener();
    let app = strict_server(&egress_yaml(&[
        format!("127.0.0.1:{}", target.port),
        format!("localhost:{}", target.port),
    ]))
    .await;
    let (alice, _) = app.session("alice").await;

    let env = bash(&app, &alice, "env | grep -i _proxy= | sort").await;
    for key in [
        "HTTPS_PROXY=http://cah:cah_relay_",
        "http_proxy=http://cah:cah_relay_",
    ] {
        assert!(env.contains(key), "{key} in {env}");
    }
    assert!(env.contains("NO_PROXY=127.0.0.1"), "{env}");

    // NO_PROXY names loopback (the relay), so curl is told to use the proxy for this one.
    let url = format!("http://127.0.0.1:{}", target.port);
    let plain = bash(&app, &alice, &format!("curl -sS --noproxy '' {url}/plain")).await;
    assert!(
        plain.contains("REACHED /plain"),
        "plain HTTP through the proxy: {plain}"
    );
    let tunnel = bash(&app, &alice, &format!("curl -sS -p --noproxy '' {url}/tunnel")).await;
    assert!(tunnel.contains("REACHED /tunnel"), "a CONNECT tunnel: {tunnel}");
    let heads = target.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /plain HTTP/1.1\r\n"),
        "origin form: {heads:?}"
    );
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("proxy-authorization") && !h.contains("cah_relay_")),
        "the agent's token reached the target: {heads:?}"
    );

    // Another port of the same address, a name that is not on the list, an allowed name that
    // leads to loopback (only the IP literal may), and no proxy at all.
    let refused = bash(
        &app,
        &alice,
        &format!(
            "curl -sS --noproxy '' http://127.0.0.1:{other_port}/x; echo; \
             curl -sS --noproxy '' http://localhost:{port}/name; echo; \
             curl -sS -p --noproxy '' http://127.0.0.1:{other_port}/y; echo; \
             curl -sS https://example.org/; echo; \
             curl -sS --noproxy '*' -m 5 {url}/direct; echo",
            port = target.port
        ),
    )
    .await;
    assert!(!refused.contains("REACHED"), "{refused}");
    assert!(refused.contains("refused"), "the refusal says why: {refused}");
    assert_eq!(
        *other_bytes.lock().unwrap(),
        0,
        "the other listener received bytes"
    );
    assert_eq!(
        target.heads().len(),
        2,
        "the target was reached without the proxy"
    );
    let log = app.server.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("egress refused")).collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.contains(&other_port.to_string()) && l.contains("alice") && l.contains(&alice)),
        "the refusal is logged with session and user: {refusals:?}"
    );
    assert!(refusals.iter().any(|l| l.contains("example.org")), "{refusals:?}");
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("localhost") && l.contains("internal addresses")),
        "{refusals:?}"
    );

    // The model itself is still reached directly (NO_PROXY), not through the proxy.
    let answer = app.chat_ok(&alice, "hello").await;
    assert!(answer["text"].is_string(), "{answer}");
}

#[tokio::test]
async fn without_an_allow_list_there_is_no_proxy_and_nothing_is_reached() {
    if !strict_possible() {
        return;
    }
    let target = Target::start();
    let app = strict_server("").await;
    let (alice, _) = app.session("alice").await;
    let out = bash(
        &app,
        &alice,
        &format!(
            "env | grep -ic _proxy=; curl -sS -m 5 http://127.0.0.1:{}/x; echo",
            target.port
        ),
    )
    .await;
    assert!(
        out.lines().next().is_some_and(|l| l.trim() == "0"),
        "proxy variables: {out}"
    );
    assert!(!out.contains("REACHED"), "{out}");
    assert!(target.heads().is_empty(), "the target was reached: {out}");
    assert!(!app.server.data_dir().join("run/egress.sock").exists());
}

#[tokio::test]
async fn the_proxy_refuses_requests_without_a_live_token() {
    if !strict_possible() {
        return;
    }
    let target = Target::start();
    let app = strict_server(&egress_yaml(&[format!("127.0.0.1:{}", target.port)])).await;
    let (alice, _) = app.session("alice").await;
    // From inside the sandbox: the proxy's own port, with no credential and with a made-up token.
    let url = format!("http://127.0.0.1:{}/x", target.port);
    let out = bash(
        &app,
        &alice,
        &format!(
            "P=${{HTTPS_PROXY##*@}}; \
             curl -sS -o /dev/null -w 'none %{{http_code}}\\n' --noproxy '' -x http://$P {url}; \
             curl -sS -o /dev/null -w 'forged %{{http_code}}\\n' --noproxy '' \
               -x http://cah:cah_relay_{forged}@$P {url}; \
             curl -sS -o /dev/null -w 'tunnel %{{http_connect}}\\n' --noproxy '' -p \
               -x http://cah:cah_relay_{forged}@$P {url}",
            forged = "0".repeat(64)
        ),
    )
    .await;
    assert!(out.contains("none 407"), "{out}");
    assert!(out.contains("forged 407"), "{out}");
    assert!(out.contains("tunnel 407"), "{out}");
    // From the host, on the proxy's socket.
    let socket = app.server.data_dir().join("run/egress.sock");
    for credential in ["", "Proxy-Authorization: Basic Y2FoOmNhaF9yZWxheV9ub3Q=\r\n"] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        write!(
            stream,
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{credential}\r\n",
            port = target.port
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 407 "), "{answer}");
        assert!(answer.contains("Proxy-Authenticate: Basic"), "{answer}");
    }
    assert!(
        target.heads().is_empty(),
        "a request without a live token got through"
    );
    assert!(app.server.log().contains("without a live session token refused"));
}

#[tokio::test]
async fn another_sessions_live_token_is_refused_on_the_proxy() {
    if !strict_possible() {
        return;
    }
    let target = Target::start();
    let app = strict_server(&egress_yaml(&[format!("127.0.0.1:{}", target.port)])).await;
    let (alice, _) = app.session("alice").await;
    let (bob, _) = app.session("bob").await;
    assert!(bash(&app, &bob, "echo running").await.contains("running"));
    let bob_cli = crate::support::procs::clis(&bob);
    assert_eq!(bob_cli.len(), 1, "bob's CLI runs");
    let bob_token =
        crate::support::procs::env_var(bob_cli[0], "ANTHROPIC_API_KEY").expect("bob's CLI has a token");
    // Alice's agent learnt bob's live token: it tries it as the password on her own proxy port
    // (plain and tunnelled), then her own proxy URL the same way (which must work).
    let base = format!("http://127.0.0.1:{}", target.port);
    let out = bash(
        &app,
        &alice,
        &format!(
            "P=${{HTTPS_PROXY##*@}}; \
             curl -sS -o /dev/null -w 'bobs %{{http_code}}\\n' --noproxy '' \
               -x http://cah:{bob_token}@$P {base}/bobs; \
             curl -sS -o /dev/null -w 'bobs-tunnel %{{http_connect}}\\n' --noproxy '' -p \
               -x http://cah:{bob_token}@$P {base}/bobs-tunnel; \
             curl -sS -o /dev/null -w 'own %{{http_code}}\\n' --noproxy '' -x \"$HTTPS_PROXY\" {base}/own"
        ),
    )
    .await;
    assert!(out.contains("bobs 407"), "{out}");
    assert!(out.contains("bobs-tunnel 407"), "{out}");
    assert!(
        out.contains("own 200"),
        "alice's own token works the same way: {out}"
    );
    let heads = target.heads();
    assert!(
        heads.iter().all(|head| !head.contains("/bobs")),
        "a request with bob's token got through: {heads:?}"
    );
    assert!(heads.iter().any(|head| head.contains("/own")), "{heads:?}");
    assert!(
        app.server
            .log()
            .contains("egress proxy refused another session's token")
    );
}
