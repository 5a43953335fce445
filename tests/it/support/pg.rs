//! PostgreSQL for the stories. [`TestDatabase`]: a fresh database on the machine's server
//! (127.0.0.1:5432, user `postgres`, trust auth) for one test, dropped when the test ends, so
//! parallel tests and runs never meet. [`start_server`]: the real server storing its sessions in such
//! a database. [`PrivateCluster`]: a PostgreSQL server of the test's own (its own data folder and
//! port), which the test may stop and start again without touching the shared one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use claude_agent_http::store::{PostgresSettings, PostgresStore};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tempfile::TempDir;

use super::TestServer;

/// The machine's PostgreSQL, as its superuser, in its maintenance database.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Test databases are named `it_<pid>_<uuid>`: the pid tells which are left over by a test process
/// that was killed before it could drop them.
const PREFIX: &str = "it_";

/// A database of one test's own, dropped (with whatever still uses it) when this is dropped.
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates an empty database on the machine's server.
    pub async fn create() -> TestDatabase {
        let mut admin = admin().await;
        drop_leftovers(&mut admin).await;
        let name = format!("{PREFIX}{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        TestDatabase { name }
    }

    /// The URL the service connects with.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// The store's settings for this database.
    pub fn settings(&self, ttl_seconds: u64) -> PostgresSettings {
        PostgresSettings {
            url: Some(self.url()),
            host: String::new(),
            port: 0,
            database: String::new(),
            user: String::new(),
            password: String::new(),
            pool_size: 5,
            ttl_seconds,
        }
    }

    /// A store on this database (migrating it on first use).
    pub async fn store(&self, ttl_seconds: u64) -> PostgresStore {
        PostgresStore::connect(&self.settings(ttl_seconds))
            .await
            .unwrap_or_else(|e| panic!("PostgresStore on {}: {e}", self.name))
    }

    /// A plain connection, to look at rows at rest.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: drop the database from a
        // thread with a runtime of its own, and wait for it.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = admin().await;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .map(drop)
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop test database {}", self.name),
        }
    }
}

async fn admin() -> PgConnection {
    PgConnection::connect(ADMIN_URL).await.unwrap_or_else(|e| {
        panic!("the PostgreSQL stories need the machine's PostgreSQL at {ADMIN_URL} (trust auth): {e}")
    })
}

/// Drops the test databases of test processes that no longer run (killed before their drop ran);
/// once per test process.
async fn drop_leftovers(admin: &mut PgConnection) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'it\\_%'")
            .fetch_all(&mut *admin)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    for name in names {
        let pid = name[PREFIX.len()..].split('_').next().unwrap_or("");
        let dead = pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// The real server with `session.storage: postgresql` on a fresh database; the database is
/// dropped after the server stops.
pub struct PgServer {
    // Declared first: dropped (the server killed) before the database is dropped.
    pub server: TestServer,
    pub database: TestDatabase,
}

impl std::ops::Deref for PgServer {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.server
    }
}

/// Starts the real server on a fresh PostgreSQL database, with `extra_yaml` appended to its config.
pub async fn start_server(extra_yaml: &str) -> PgServer {
    let database = TestDatabase::create().await;
    let server = TestServer::start_with_env(extra_yaml, server_env(&database.url())).await;
    PgServer { server, database }
}

/// The environment that puts a server on the PostgreSQL at `url`. The service's own variable,
/// so that a `DATABASE_URL` in the developer's environment does not win.
pub fn server_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("CLAUDE_AGENT_SESSION_STORAGE".into(), "postgresql".into()),
        ("CLAUDE_AGENT_SESSION__PG_URL".into(), url.into()),
    ]
}

/// A PostgreSQL server of the test's own: `initdb` into a temporary folder, the postmaster a child
/// of the test process on a free loopback port (it dies with the test process even if the test
/// runner kills it, and [`Drop`] stops it otherwise). Run as the `postgres` user when the tests run
/// as root (PostgreSQL refuses to run as root).
pub struct PrivateCluster {
    dir: TempDir,
    port: u16,
    postmaster: Option<Child>,
}

impl PrivateCluster {
    /// Creates the cluster and starts it.
    pub async fn start() -> PrivateCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the cluster folder");
        }
        let mut initdb = Command::new(bin("initdb"));
        initdb
            .arg("--pgdata")
            .arg(dir.path().join("data"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .args(["--no-sync", "--no-instructions"])
            .stdout(Stdio::null());
        let output = as_owner(&mut initdb, owner).output().expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = port_outside_the_ephemeral_range();
        let mut cluster = PrivateCluster {
            dir,
            port,
            postmaster: None,
        };
        cluster.restart().await;
        cluster
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster again (after [`PrivateCluster::stop_immediately`]) and waits until
    /// it accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.postmaster.is_none(), "the cluster is running");
        let log = std::fs::File::create(self.log_path()).expect("postgres log");
        let mut postgres = Command::new(bin("postgres"));
        postgres
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-F"])
            .stdout(Stdio::null())
            .stderr(log);
        as_owner(&mut postgres, run_as());
        // SAFETY: only an async-signal-safe prctl between fork and exec (after the uid change,
        // which would clear it): the postmaster dies with the test process.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut postgres, || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                Ok(())
            });
        }
        self.postmaster = Some(postgres.spawn().expect("start postgres"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(connection) = PgConnection::connect(&self.url()).await {
                let _ = connection.close().await;
                return;
            }
            let child = self.postmaster.as_mut().expect("started");
            if let Some(status) = child.try_wait().expect("wait") {
                self.postmaster = None;
                panic!("postgres exited at startup ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server as `pg_ctl stop -m immediate` does (SIGQUIT: every connection is cut, no
    /// checkpoint) and waits until it is gone.
    pub fn stop_immediately(&mut self) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// What the server logged since it last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

/// The PostgreSQL server programs: the newest `/usr/lib/postgresql/<version>/bin` (Debian's
/// layout, where they are not on `PATH`), else `PATH`.
/// A free loopback port below the kernel's ephemeral range (`ip_local_port_range`, from 32768 by
/// default): while the cluster is stopped, no `bind(0)` of another test (a server, a relay, a model
/// stand-in) can take its port, so it can start again on the same one.
fn port_outside_the_ephemeral_range() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20000.min(ephemeral_from.saturating_sub(2000));
    let span = ephemeral_from.saturating_sub(low).max(1);
    let seed = std::process::id() as u64 ^ uuid::Uuid::new_v4().as_u128() as u64;
    for attempt in 0..200u64 {
        let port = low + ((seed.wrapping_add(attempt * 7919)) % u64::from(span)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_from}");
}

fn bin(program: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let path = entry.path().join("bin").join(program);
            path.exists().then_some((version, path))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, path)| path)
        .unwrap_or_else(|| PathBuf::from(program))
}

/// The uid and gid of `postgres` when the tests run as root; `None` otherwise.
fn run_as() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let entry = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("a postgres user (PostgreSQL refuses to run as root)");
    let fields: Vec<&str> = entry.split(':').collect();
    Some((fields[2].parse().expect("uid"), fields[3].parse().expect("gid")))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        std::os::unix::process::CommandExt::uid(command, uid);
        std::os::unix::process::CommandExt::gid(command, gid);
        // The test's folder may be unreadable to postgres; the cluster's own is not.
        command.current_dir("/");
    }
    command
}
