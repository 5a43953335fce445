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

/// Runs a Python program (the system's `/usr/bin/python3`) in `session`; returns its output.
async fn python(app: &AgentServer, session: &str, program: &str) -> String {
    bash(app, session, &format!("python3 - <<'EOF'\n{program}\nEOF")).await
}

/// The lines of `output` that start with `tag`, their words after it.
fn tagged<'a>(output: &'a str, tag: &str) -> Vec<Vec<&'a str>> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix(tag))
        .map(|rest| rest.split_whitespace().collect())
        .collect()
}

#[tokio::test]
async fn io_uring_cannot_be_set_up() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, _) = app.session("alice").await;
    // io_uring_setup is 425 on every architecture; a ring would be a descriptor (>= 0), from which
    // sockets and files could be opened past the filter.
    let out = python(
        &app,
        &alice,
        "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         params = ctypes.create_string_buffer(120)\n\
         ring = libc.syscall(425, 4, params)\n\
         print('RING', ring, ctypes.get_errno())",
    )
    .await;
    let ring = tagged(&out, "RING");
    assert_eq!(ring.len(), 1, "the probe ran: {out}");
    assert_eq!(ring[0][0], "-1", "alice got an io_uring: {out}");
    assert!(
        matches!(ring[0][1], "1" | "38"),
        "refused with EPERM or ENOSYS: {out}"
    );
}

#[tokio::test]
async fn no_terminal_can_be_typed_into() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, _) = app.session("alice").await;
    // Without the filter both ioctls answer ENOTTY (25) on a pipe; the filter answers EPERM (1)
    // before the kernel looks at the descriptor, so a terminal handed in later is covered too.
    let out = python(
        &app,
        &alice,
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         fds = [0, 1, 2]\n\
         for path in ('/dev/tty', '/dev/console', '/dev/tty0', '/dev/tty1', '/dev/ptmx'):\n\
         \x20   try:\n\
         \x20       fds.append(os.open(path, os.O_RDWR | os.O_NOCTTY)); print('OPENED', path)\n\
         \x20   except OSError as e: print('closed', path, e)\n\
         try:\n\
         \x20   os.openpty(); print('OPENED pty')\n\
         except OSError as e: print('closed pty', e)\n\
         char = ctypes.c_char(b'x')\n\
         sub = ctypes.c_char(b'\\x03')\n\
         for fd in fds:\n\
         \x20   print('TIOCSTI', fd, libc.ioctl(fd, 0x5412, ctypes.byref(char)), ctypes.get_errno())\n\
         \x20   print('TIOCLINUX', fd, libc.ioctl(fd, 0x541C, ctypes.byref(sub)), ctypes.get_errno())",
    )
    .await;
    assert!(!out.contains("OPENED"), "alice opened a terminal: {out}");
    let tries: Vec<_> = tagged(&out, "TIOCSTI")
        .into_iter()
        .chain(tagged(&out, "TIOCLINUX"))
        .collect();
    assert_eq!(tries.len(), 6, "both ioctls on stdin, stdout and stderr: {out}");
    for attempt in tries {
        assert_eq!(attempt[1..], ["-1", "1"], "refused by the filter (EPERM): {out}");
    }
}

#[tokio::test]
async fn a_setuid_root_binary_runs_without_root() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, _) = app.session("alice").await;
    let host: Vec<&str> = [
        "/usr/bin/passwd",
        "/usr/bin/su",
        "/usr/bin/chsh",
        "/usr/bin/newgrp",
        "/usr/bin/gpasswd",
        "/usr/bin/mount",
        "/usr/bin/sudo",
    ]
    .into_iter()
    .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0))
    .collect();
    assert!(
        host.contains(&"/usr/bin/passwd"),
        "the host has setuid-root passwd to try (found {host:?})"
    );
    // Each binary is started and its credentials read from /proc once it runs (a setuid program
    // that gained root shows euid 0 there; one that ended at once stays a zombie, still readable,
    // until it is waited for).
    let program = format!(
        "import os, subprocess, time\n\
         for path in {host:?}:\n\
         \x20   child = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
         \x20   seen = None\n\
         \x20   for _ in range(4000):\n\
         \x20       try: status = open('/proc/%d/status' % child.pid).read().split('\\n')\n\
         \x20       except OSError: break\n\
         \x20       if status[0].split('\\t')[1] == os.path.basename(path)[:15]:\n\
         \x20           seen = [l for l in status if l.startswith(('Uid:', 'Gid:'))]; break\n\
         \x20       time.sleep(0.005)\n\
         \x20   print('RAN', path, '|'.join(seen) if seen else 'unseen')\n\
         \x20   child.kill(); child.wait()\n\
         print('EUID', os.geteuid())"
    );
    let out = python(&app, &alice, &program).await;
    let ran = tagged(&out, "RAN");
    assert_eq!(ran.len(), host.len(), "every binary was tried: {out}");
    let passwd = ran
        .iter()
        .find(|words| words[0] == "/usr/bin/passwd")
        .expect("passwd ran");
    assert_ne!(passwd[1], "unseen", "passwd was seen running: {out}");
    for words in &ran {
        let ids: Vec<&str> = words[1..]
            .iter()
            .flat_map(|w| w.split(['|', '\t', ':']))
            .filter(|w| w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty())
            .collect();
        assert!(!ids.contains(&"0"), "{} gained root: {out}", words[0]);
    }
    // Nor did a privileged write happen: nothing in /etc (read-only) or the host changed.
    let marker = "/usr/bin/mount -t tmpfs x /tmp && echo MOUNTED; \
                  /usr/bin/su -c 'touch /etc/ROOT-MARKER' </dev/null; \
                  test -e /etc/ROOT-MARKER && echo MARKED; echo TRIED";
    let tried = bash(&app, &alice, marker).await;
    assert!(tried.contains("TRIED"), "{tried}");
    assert!(!tried.contains("MOUNTED") && !tried.contains("MARKED"), "{tried}");
}

#[tokio::test]
async fn bobs_cli_and_the_service_are_out_of_reach_through_proc() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let t = tenants(&app).await;
    let bob_cli = procs::clis(&t.bob);
    assert_eq!(bob_cli.len(), 1, "bob's CLI runs");
    let bob_token = procs::env_var(bob_cli[0], "ANTHROPIC_API_KEY").expect("bob's CLI has a token");
    assert!(bob_token.starts_with("cah_relay_"), "{bob_token}");
    let server = app.server.pid();
    let real_key = procs::env_var(server, "ANTHROPIC_API_KEY").expect("the service holds the key");
    // Memory by its mapped addresses, the environment and the working directory of bob's CLI
    // and of the service; then a search for the secrets in everything alice can read.
    let program = format!(
        "import os\n\
         for pid in ({bob}, {server}):\n\
         \x20   for part in ('environ', 'cmdline', 'maps', 'status'):\n\
         \x20       try: print(part, pid, open('/proc/%d/%s' % (pid, part), 'rb').read()[:20000])\n\
         \x20       except OSError as e: print('closed', part, pid, e)\n\
         \x20   try:\n\
         \x20       mem = open('/proc/%d/mem' % pid, 'rb')\n\
         \x20       for line in open('/proc/%d/maps' % pid):\n\
         \x20           start, end = [int(x, 16) for x in line.split()[0].split('-')]\n\
         \x20           mem.seek(start); print('MEM', pid, mem.read(min(end - start, 1 << 20)))\n\
         \x20   except OSError as e: print('closed mem', pid, e)\n\
         \x20   try: print('cwd', pid, os.listdir('/proc/%d/cwd' % pid))\n\
         \x20   except OSError as e: print('closed cwd', pid, e)\n\
         \x20   try: print('root', pid, os.listdir('/proc/%d/root/' % pid))\n\
         \x20   except OSError as e: print('closed root', pid, e)",
        bob = bob_cli[0],
    );
    let out = python(&app, &t.alice, &program).await;
    assert!(!out.contains("MEM"), "alice read another process's memory: {out}");
    // The secrets are put together in a file by the shell's own `printf`, so no command line of
    // the search holds them (its own processes are searched too).
    let (token_a, token_b) = bob_token.split_at(bob_token.len() / 2);
    let (key_a, key_b) = real_key.split_at(real_key.len() / 2);
    let search = bash(
        &app,
        &t.alice,
        &format!(
            "printf '%s%s\\n%s%s\\n' '{token_a}' '{token_b}' '{key_a}' '{key_b}' > /tmp/secrets; \
             for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline /proc/[0-9]*/task/[0-9]*/environ; do \
             grep -qa -f /tmp/secrets $f 2>/dev/null && echo FOUND $f; done; \
             grep -rla -f /tmp/secrets --exclude=secrets /etc /tmp \"$HOME\" 2>/dev/null | sed 's/^/FOUND /'; \
             env | grep -qa -f /tmp/secrets && echo FOUND env; echo SEARCHED"
        ),
    )
    .await;
    assert!(search.contains("SEARCHED"), "{search}");
    assert!(!search.contains("FOUND"), "a secret was found: {search}");
    for (what, output) in [("/proc", &out), ("the search", &search)] {
        assert!(
            !output.contains(&bob_token),
            "{what} found bob's relay token: {output}"
        );
        assert!(
            !output.contains(&real_key),
            "{what} found the real API key: {output}"
        );
        assert_no_secret(what, output);
    }
    // Bob's CLI is untouched: the same process, still answering.
    assert_eq!(procs::clis(&t.bob), bob_cli);
    let answer = app.chat_ok(&t.bob, "hello").await;
    assert!(answer["text"].is_string(), "{answer}");
}

#[tokio::test]
async fn ptrace_reaches_nothing_outside_and_nothing_inside() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let t = tenants(&app).await;
    let bob_cli = procs::clis(&t.bob);
    let server = app.server.pid();
    // PTRACE_ATTACH (16) to the service, bob's CLI, the sandbox's init and a child of alice's
    // own; PTRACE_TRACEME (0) in a child; process_vm_readv on the child. Without the filter the
    // attach to her own child succeeds (no Yama here), which the TracerPid line would show.
    let program = format!(
        "import ctypes, os, signal, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]\n\
         child = os.fork()\n\
         if child == 0:\n\
         \x20   r = libc.ptrace(0, 0, None, None); os.write(1, b'TRACEME %d %d\\n' % (r, ctypes.get_errno())); time.sleep(30); os._exit(0)\n\
         time.sleep(0.2)\n\
         for pid in ({server}, {bob}, 1, child):\n\
         \x20   print('ATTACH', pid, libc.ptrace(16, pid, None, None), ctypes.get_errno())\n\
         print([l for l in open('/proc/%d/status' % child) if l.startswith('TracerPid')][0].replace('\\t', ' ').strip())\n\
         buf = ctypes.create_string_buffer(8)\n\
         class Iov(ctypes.Structure): _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n\
         local = Iov(ctypes.cast(buf, ctypes.c_void_p), 8); remote = Iov(0x400000, 8)\n\
         print('VMREAD', libc.process_vm_readv(child, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0), ctypes.get_errno())\n\
         os.kill(child, signal.SIGKILL); os.waitpid(child, 0)",
        bob = bob_cli[0],
    );
    let out = python(&app, &t.alice, &program).await;
    let attaches = tagged(&out, "ATTACH");
    assert_eq!(attaches.len(), 4, "every attach was tried: {out}");
    for words in attaches {
        assert_eq!(words[1], "-1", "alice attached to {}: {out}", words[0]);
    }
    assert!(
        out.contains("TracerPid: 0"),
        "her child is traced by nobody: {out}"
    );
    let vmread = tagged(&out, "VMREAD");
    assert_eq!(
        vmread.first().map(|w| w[1]),
        Some("1"),
        "process_vm_readv: EPERM: {out}"
    );
    let traceme = tagged(&out, "TRACEME");
    assert_eq!(traceme.first().map(|w| &w[..]), Some(&["-1", "1"][..]), "{out}");
    // Nothing outside is stopped or traced.
    for pid in bob_cli.iter().copied().chain([server]) {
        assert!(!procs::is_stopped(pid), "{pid} was stopped: {out}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("TracerPid:\t0"), "{pid} is traced: {status}");
    }
    let answer = app.chat_ok(&t.bob, "hello").await;
    assert!(answer["text"].is_string(), "{answer}");
}

#[tokio::test]
async fn no_namespace_or_mount_can_be_made() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, alice_dir) = app.session("alice").await;
    std::fs::create_dir(alice_dir.join("shadow")).unwrap();
    std::fs::write(alice_dir.join("shadow/keep"), "kept").unwrap();
    // A user namespace would make her root in it (`id -u` 0) and let her mount over her own
    // tree; each attempt prints its uid or nothing, and the mount table and `shadow` are looked at
    // before and after.
    let probe = "wc -l < /proc/self/mountinfo; \
                 for flags in -r -U -Ur -m -n -p -i -u -C -T; do echo \"NS $flags $(unshare $flags -f id -u 2>/dev/null || echo refused)\"; done; \
                 unshare -rm sh -c 'mount -t tmpfs x shadow && echo MOUNTED'; \
                 mount -t tmpfs x shadow && echo MOUNTED; mount --bind / shadow && echo MOUNTED; \
                 python3 -c 'import ctypes; ctypes.CDLL(None).unshare(0x10000000) == 0 and print(\"MOUNTED unshared\")'; \
                 ls shadow; wc -l < /proc/self/mountinfo";
    let out = bash(&app, &alice, probe).await;
    for words in tagged(&out, "NS") {
        assert_eq!(words.get(1), Some(&"refused"), "unshare {}: {out}", words[0]);
    }
    assert_eq!(tagged(&out, "NS").len(), 10, "every unshare was tried: {out}");
    assert!(!out.contains("MOUNTED"), "{out}");
    assert!(out.contains("keep"), "her tree is not mounted over: {out}");
    let counts: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(counts.len(), 2, "{out}");
    assert_eq!(counts[0], counts[1], "the mount table changed: {out}");
    assert_eq!(
        std::fs::read_to_string(alice_dir.join("shadow/keep")).unwrap(),
        "kept"
    );
}

#[tokio::test]
async fn raw_packet_and_datagram_sockets_reach_nothing_on_the_host() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let (alice, _) = app.session("alice").await;
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let port = udp.local_addr().unwrap().port();
    let udp6 = UdpSocket::bind("[::1]:0").ok();
    if let Some(socket) = &udp6 {
        socket.set_nonblocking(true).unwrap();
    }
    let port6 = udp6.as_ref().map_or(0, |s| s.local_addr().unwrap().port());
    // Every way to a datagram: UDP on v4 and v6 (also with flags on the type), ICMP "ping"
    // sockets, raw IP, packet sockets (a whole frame to any interface), netlink.
    let program = format!(
        "import socket\n\
         tries = [\n\
         \x20   ('udp4', socket.AF_INET, socket.SOCK_DGRAM, 0, ('127.0.0.1', {port})),\n\
         \x20   ('udp4nb', socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0, ('127.0.0.1', {port})),\n\
         \x20   ('udp6', socket.AF_INET6, socket.SOCK_DGRAM, 0, ('::1', {port6})),\n\
         \x20   ('ping', socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP, ('127.0.0.1', 0)),\n\
         \x20   ('raw4', socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP, ('127.0.0.1', {port})),\n\
         \x20   ('raw6', socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP, ('::1', {port6})),\n\
         \x20   ('packet', socket.AF_PACKET, socket.SOCK_RAW, 0x0300, None),\n\
         \x20   ('packetdgram', socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300, None),\n\
         \x20   ('netlink', socket.AF_NETLINK, socket.SOCK_RAW, 0, None),\n\
         \x20   ('seqpacket4', socket.AF_INET, socket.SOCK_SEQPACKET, 0, None),\n\
         ]\n\
         for name, family, kind, proto, to in tries:\n\
         \x20   try:\n\
         \x20       s = socket.socket(family, kind, proto); print('OPENED', name)\n\
         \x20       if to: s.sendto(b'x' * 8, to); print('SENT', name)\n\
         \x20   except OSError as e: print('refused', name, e.errno)"
    );
    let out = python(&app, &alice, &program).await;
    assert_eq!(
        out.matches("refused").count(),
        10,
        "every socket was refused: {out}"
    );
    assert!(!out.contains("OPENED") && !out.contains("SENT"), "{out}");
    // The effect: nothing arrived (a datagram sent on loopback is queued before sendto returns).
    let mut buf = [0u8; 64];
    assert!(udp.recv_from(&mut buf).is_err(), "a datagram arrived: {out}");
    if let Some(socket) = &udp6 {
        assert!(
            socket.recv_from(&mut buf).is_err(),
            "a v6 datagram arrived: {out}"
        );
    }
}

#[tokio::test]
async fn bobs_live_token_is_refused_from_alices_sandbox() {
    if !strict_possible() {
        return;
    }
    let app = strict_server("").await;
    let t = tenants(&app).await;
    let bob_cli = procs::clis(&t.bob);
    assert_eq!(bob_cli.len(), 1, "bob's CLI runs");
    let bob_token = procs::env_var(bob_cli[0], "ANTHROPIC_API_KEY").expect("bob's CLI has a token");
    // Alice's agent learnt bob's live token; it tries it through her own relay port, on both
    // headers, then her own token the same way (which must work: the path itself is open).
    let program = format!(
        "import json, os, urllib.request, urllib.error\n\
         base = os.environ['ANTHROPIC_BASE_URL']\n\
         body = json.dumps({{'model': 'm', 'max_tokens': 8, 'messages': [{{'role': 'user', 'content': 'hi'}}]}}).encode()\n\
         bob = '{bob_token}'\n\
         for name, headers in (('bobs-key', {{'x-api-key': bob}}), ('bobs-bearer', {{'authorization': 'Bearer ' + bob}}),\n\
         \x20                     ('own-key', {{'x-api-key': os.environ['ANTHROPIC_API_KEY']}})):\n\
         \x20   headers.update({{'content-type': 'application/json', 'anthropic-version': '2023-06-01'}})\n\
         \x20   request = urllib.request.Request(base + '/v1/messages?probe=' + name, data=body, headers=headers)\n\
         \x20   try:\n\
         \x20       with urllib.request.urlopen(request, timeout=30) as answer: print('STATUS', name, answer.status)\n\
         \x20   except urllib.error.HTTPError as e: print('STATUS', name, e.code)\n\
         \x20   except Exception as e: print('STATUS', name, 'failed', e)"
    );
    let out = python(&app, &t.alice, &program).await;
    let statuses = tagged(&out, "STATUS");
    let status = |name: &str| {
        statuses
            .iter()
            .find(|w| w[0] == name)
            .map(|w| w[1].to_string())
            .unwrap_or_default()
    };
    assert_eq!(status("bobs-key"), "401", "{out}");
    assert_eq!(status("bobs-bearer"), "401", "{out}");
    assert_eq!(
        status("own-key"),
        "200",
        "alice's own token works the same way: {out}"
    );
    let seen: Vec<String> = app.model.seen().into_iter().map(|r| r.target).collect();
    assert!(
        seen.iter().all(|target| !target.contains("probe=bobs")),
        "a request with bob's token reached the model: {seen:?}"
    );
    assert!(
        seen.iter().any(|target| target.contains("probe=own-key")),
        "alice's own probe reached the model: {seen:?}"
    );
    let log = app.server.log();
    assert!(
        log.contains("refused another session's token"),
        "the refusal is logged"
    );
    // Bob's token was live all along: his CLI is the same and still answers.
    assert_eq!(procs::clis(&t.bob), bob_cli);
    let answer = app.chat_ok(&t.bob, "hello").await;
    assert_eq!(answer["text"], "echo: hello", "{answer}");
}
