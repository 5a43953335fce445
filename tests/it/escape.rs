//! The escape suite: alice's agent (the real CLI, driven by the stand-in's `tool ...` scripts,
//! in bypassPermissions so every tool runs) tries to reach bob, the service and the host under
//! `isolation.profile: strict`. Every story asserts the *effect* (bob's file unchanged, a
//! listener got nothing, the service still answers), not only the tool's exit code.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::agent::AgentServer;
use crate::support::procs;

const SECRET: &str = "BOB-SECRET-42";
const SERVICE_SECRET: &str = "service-secret-73";

/// Whether this host can run the strict profile (root with namespaces); the stories need it.
pub(crate) fn strict_possible() -> bool {
    rustix::process::geteuid().is_root()
}

/// A server in the strict profile, with an environment secret of its own (`limits`: more
/// `isolation` keys).
pub(crate) async fn strict_server(limits: &str) -> AgentServer {
    let yaml = format!("  permission_mode: bypassPermissions\nisolation:\n  profile: strict\n{limits}");
    AgentServer::start_with_env(
        &yaml,
        vec![("ESCAPE_TEST_SERVICE_SECRET".into(), SERVICE_SECRET.into())],
    )
    .await
}

/// Runs `tool <name> <input>` in `session`; returns the tool call (its `result` and `is_error`).
async fn tool(app: &AgentServer, session: &str, name: &str, input: Value) -> Value {
    let answer = app.chat_ok(session, &format!("tool {name} {input}")).await;
    answer["tool_calls"][0].clone()
}

/// Runs a shell command in `session`; returns what the tool printed (output or error).
pub(crate) async fn bash(app: &AgentServer, session: &str, command: &str) -> String {
    let call = tool(app, session, "Bash", json!({"command": command})).await;
    call["result"].as_str().unwrap_or_default().to_string()
}

/// Alice's and bob's sessions, bob's secret planted in his workspace and his CLI state.
struct Tenants {
    alice: String,
    alice_dir: PathBuf,
    bob: String,
    bob_dir: PathBuf,
    bob_state: PathBuf,
}

async fn tenants(app: &AgentServer) -> Tenants {
    let (alice, alice_dir) = app.session("alice").await;
    let (bob, bob_dir) = app.session("bob").await;
    // Bob's CLI runs once, so his tree and state are his.
    let said = bash(app, &bob, &format!("echo {SECRET} > secret.txt && echo planted")).await;
    assert!(said.contains("planted"), "bob's own write works: {said}");
    let bob_state = app.server.data_dir().join("agents").join("bob");
    std::fs::write(bob_state.join("secret.txt"), SECRET).unwrap();
    Tenants {
        alice,
        alice_dir,
        bob,
        bob_dir,
        bob_state,
    }
}

fn assert_no_secret(what: &str, output: &str) {
    assert!(!output.contains(SECRET), "{what} leaked bob's secret: {output}");
    assert!(
        !output.contains(SERVICE_SECRET),
        "{what} leaked the service's secret: {output}"
    );
}

#[tokio::test]
async fn alice_cannot_read_or_write_bobs_workspace_or_cli_state() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let t = tenants(&app).await;
    let bob_secret = t.bob_dir.join("secret.txt");
    let state_secret = t.bob_state.join("secret.txt");
    for path in [&bob_secret, &state_secret] {
        let shell = bash(
            &app,
            &t.alice,
            &format!(
                "cat {}; ls -la {}",
                path.display(),
                path.parent().unwrap().display()
            ),
        )
        .await;
        assert_no_secret("cat", &shell);
        let read = tool(&app, &t.alice, "Read", json!({"file_path": path})).await;
        assert_no_secret("the Read tool", &read.to_string());
    }
    // Writes by path, with the shell and with the Write tool.
    let planted = t.bob_dir.join("planted-by-alice");
    bash(
        &app,
        &t.alice,
        &format!(
            "echo x > {}; echo y >> {}",
            planted.display(),
            bob_secret.display()
        ),
    )
    .await;
    tool(
        &app,
        &t.alice,
        "Write",
        json!({"file_path": t.bob_dir.join("written-by-alice"), "content": "x"}),
    )
    .await;
    tool(
        &app,
        &t.alice,
        "Write",
        json!({"file_path": t.bob_state.join("settings.json"), "content": "{}"}),
    )
    .await;
    assert!(
        !planted.exists() && !t.bob_dir.join("written-by-alice").exists(),
        "alice wrote into bob's workspace"
    );
    assert!(
        !t.bob_state.join("settings.json").exists(),
        "alice wrote into bob's CLI state"
    );
    assert_eq!(
        std::fs::read_to_string(&bob_secret).unwrap().trim(),
        SECRET,
        "bob's file changed"
    );
    // A link alice makes herself, and one planted in her workspace by a bad actor.
    let own = bash(
        &app,
        &t.alice,
        &format!("ln -s {} leak && cat leak", bob_secret.display()),
    )
    .await;
    assert_no_secret("a link alice made", &own);
    std::os::unix::fs::symlink(&t.bob_dir, t.alice_dir.join("evil")).unwrap();
    let planted = bash(&app, &t.alice, "cat evil/secret.txt; ls evil/").await;
    assert_no_secret("a planted link", &planted);
    let read = tool(
        &app,
        &t.alice,
        "Read",
        json!({"file_path": t.alice_dir.join("evil/secret.txt")}),
    )
    .await;
    assert_no_secret("the Read tool through a planted link", &read.to_string());
    // Bob still works.
    let mine = bash(&app, &t.bob, "cat secret.txt").await;
    assert!(mine.contains(SECRET), "bob reads his own file: {mine}");
}

#[tokio::test]
async fn alice_sees_only_her_own_processes_and_cannot_reach_the_service() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let t = tenants(&app).await;
    let bob_cli = procs::clis(&t.bob);
    let server = app.server.pid();
    let mut probe = format!(
        "ls /proc | grep -cE '^[0-9]+$'; cat /proc/{server}/environ; cat /proc/1/environ; \
         ls -l /proc/{server}/cwd/; kill -9 {server}; cat {db}",
        db = app.server.data_dir().join("sessions.db").display()
    );
    for pid in &bob_cli {
        probe.push_str(&format!("; cat /proc/{pid}/environ; ls /proc/{pid}/cwd/"));
    }
    let out = bash(&app, &t.alice, &probe).await;
    assert_no_secret("/proc", &out);
    assert!(
        !out.contains("SQLite format"),
        "alice read the service's database: {out}"
    );
    let count: usize = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(count < 30, "alice sees {count} processes: {out}");
    let listing = bash(&app, &t.alice, "ps -eo pid,user,args").await;
    assert!(
        !listing.contains("claude-agent-http serve") && !listing.contains(&t.bob),
        "alice sees other processes: {listing}"
    );
    let health = app.server.get("/health").await;
    assert_eq!(health.status(), StatusCode::OK, "the service survived");
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["isolation"]["profile"], "strict", "{body}");
}

/// A TCP listener on the host's loopback that counts connections.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, count)
}

#[tokio::test]
async fn alice_reaches_no_network_but_the_model() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, _) = app.session("alice").await;
    let (port, connections) = counting_listener();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let service_port = reqwest::Url::parse(&app.server.url("/")).unwrap().port().unwrap();
    let abstract_name = format!("escape-{}", uuid::Uuid::new_v4().simple());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    };
    let script = format!(
        "import socket\n\
         for port in ({port}, {service_port}, 5432):\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('127.0.0.1', port), timeout=2); s.sendall(b'x'); print('TCP-OK', port)\n\
         \x20   except Exception as e: print('tcp', port, e)\n\
         try:\n\
         \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'x', ('127.0.0.1', {udp_port})); print('UDP-OK')\n\
         except Exception as e: print('udp', e)\n\
         try:\n\
         \x20   a = socket.socket(socket.AF_UNIX); a.connect('\\0{abstract_name}'); print('ABSTRACT-OK')\n\
         except Exception as e: print('abstract', e)\n\
         try:\n\
         \x20   r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print('RAW-OK')\n\
         except Exception as e: print('raw', e)\n"
    );
    let out = bash(&app, &alice, &format!("python3 - <<'EOF'\n{script}EOF")).await;
    for reached in ["TCP-OK", "UDP-OK", "ABSTRACT-OK", "RAW-OK"] {
        assert!(!out.contains(reached), "{reached}: {out}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a host listener was reached: {out}"
    );
    let mut buf = [0u8; 16];
    assert!(udp.recv_from(&mut buf).is_err(), "a datagram arrived: {out}");
    assert!(
        abstract_listener.accept().is_err(),
        "the abstract socket was reached: {out}"
    );
    // The model itself still answers (through the relay port).
    let answer = app.chat_ok(&alice, "hello").await;
    assert!(answer["text"].is_string(), "{answer}");
}

#[tokio::test]
async fn each_user_runs_as_their_own_uid_without_capabilities() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let t = tenants(&app).await;
    let probe = "id -u; id -G; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status";
    let alice = bash(&app, &t.alice, probe).await;
    let bob = bash(&app, &t.bob, probe).await;
    let uid = |out: &str| -> u32 {
        out.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    };
    let (alice_uid, bob_uid) = (uid(&alice), uid(&bob));
    assert!((200_000..300_000).contains(&alice_uid), "{alice}");
    assert!((200_000..300_000).contains(&bob_uid), "{bob}");
    assert_ne!(alice_uid, bob_uid);
    for line in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(alice.contains(line), "{line} in {alice}");
    }
    let meta = std::fs::metadata(&t.alice_dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (alice_uid, 0o700),
        "alice's workspace is hers, 0700"
    );
    let state = std::fs::metadata(app.server.data_dir().join("agents/alice")).unwrap();
    assert_eq!(state.uid(), alice_uid, "alice's CLI state is hers");
    let su = bash(
        &app,
        &t.alice,
        "unshare -U true && echo UNSHARED; mount -t tmpfs x /tmp && echo MOUNTED",
    )
    .await;
    assert!(!su.contains("UNSHARED") && !su.contains("MOUNTED"), "{su}");
    let _ = t.bob_dir;
}

#[tokio::test]
async fn a_pids_bomb_and_a_memory_hog_are_stopped_while_bob_keeps_answering() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("  pids_max: 128\n  memory_max_mb: 1024\n").await;
    let t = tenants(&app).await;
    // Forks until refused, says how far it got, then ends its children (the CLI needs threads
    // to go on).
    let bomb = "python3 -c \"\nimport os, signal, time\nkids = []\ntry:\n    while len(kids) < 400:\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(20); os._exit(0)\n        kids.append(pid)\n    print('FORK' + 'ED', len(kids))\nexcept OSError as e:\n    print('STOP' + 'PED', len(kids), e)\nfor k in kids:\n    os.kill(k, signal.SIGKILL)\n    os.waitpid(k, 0)\n\"";
    let out = bash(&app, &t.alice, bomb).await;
    assert!(
        out.contains("STOPPED") && !out.contains("FORKED"),
        "the pids bomb ran: {out}"
    );
    let answer = app.chat_ok(&t.bob, "hello").await;
    assert!(
        answer["text"].is_string(),
        "bob answers during alice's bomb: {answer}"
    );
    let hog = "python3 -c \"x = bytearray(3 * 1024 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); print('ALLOC' + 'ATED')\"";
    let (alice2, _) = app.session("alice").await;
    let out = app
        .chat(&alice2, &format!("tool Bash {}", json!({"command": hog})))
        .await;
    let text = out.text().await.unwrap_or_default();
    assert!(
        text.contains("137") || text.contains("Killed") || text.contains("agent_crashed"),
        "the memory hog was not killed: {text}"
    );
    assert!(
        !text.contains("ALLOCATED"),
        "the memory hog got its memory: {text}"
    );
    let answer = app.chat_ok(&t.bob, "hello").await;
    assert!(
        answer["text"].is_string(),
        "bob answers after alice's hog: {answer}"
    );
}

#[tokio::test]
async fn an_ancestor_claude_md_planted_in_base_dir_is_not_visible() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, alice_dir) = app.session("alice").await;
    let base = alice_dir.parent().unwrap().to_path_buf();
    std::fs::write(base.join("CLAUDE.md"), "PLANTED-INSTRUCTIONS").unwrap();
    let out = bash(
        &app,
        &alice,
        &format!("cat {}/CLAUDE.md; ls -a {}", base.display(), base.display()),
    )
    .await;
    assert!(!out.contains("PLANTED-INSTRUCTIONS"), "{out}");
    assert!(!out.contains("bob"), "{out}");
    let mut seen = String::new();
    let _ = std::fs::File::open(base.join("CLAUDE.md")).and_then(|mut f| f.read_to_string(&mut seen));
    assert_eq!(seen, "PLANTED-INSTRUCTIONS");
    let _ = Path::new("/");
}
