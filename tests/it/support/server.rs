//! Starts the real server binary on a random loopback port with its own data folder, on the
//! storage the run names (`CLAUDE_AGENT_TEST_STORAGE`: `sqlite`, the default, `postgresql` or
//! `memory`), so every story runs on every storage (`scripts/test` runs all three). With
//! `CLAUDE_AGENT_TEST_AUTH=on` every server requires authentication: the test support gives it an
//! admin key, its client sends that key, and each [`User`] gets a user key of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::pg::{TestDatabase, server_env};

/// Names the storage the stories of this run use.
pub const STORAGE_VARIABLE: &str = "CLAUDE_AGENT_TEST_STORAGE";

/// `on`: every story's server requires authentication, and the test support authenticates.
pub const AUTH_VARIABLE: &str = "CLAUDE_AGENT_TEST_AUTH";

/// `strict`, `none` or `auto`: the isolation profile of every story's server (unset: the
/// service's default). A story that names `isolation:` itself keeps its own.
pub const ISOLATION_VARIABLE: &str = "CLAUDE_AGENT_TEST_ISOLATION";

/// The isolation profile this run's servers use, if the run names one.
pub fn isolation_of_run() -> Option<String> {
    match std::env::var(ISOLATION_VARIABLE).as_deref() {
        Err(_) | Ok("") => None,
        Ok(profile @ ("strict" | "none" | "auto")) => Some(profile.to_string()),
        Ok(other) => panic!("{ISOLATION_VARIABLE}={other}: expected strict, none or auto"),
    }
}

/// Whether this run's servers require authentication.
pub fn auth_of_run() -> bool {
    match std::env::var(AUTH_VARIABLE).as_deref() {
        Err(_) | Ok("") | Ok("none") => false,
        Ok("on") => true,
        Ok(other) => panic!("{AUTH_VARIABLE}={other}: expected on or none"),
    }
}

/// A random admin key for a test server (what `auth.admin_key` accepts).
pub fn random_admin_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A client without credentials. Idle connections are dropped after 5 s, before the server's
/// header-read timeout (10 s) closes them, so a request never goes out on a connection the server
/// is closing.
pub fn plain_client() -> Client {
    claude_agent_http::tls::install_crypto_provider();
    Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// A client that sends `key` as its bearer credential on every request.
pub fn client_with_key(key: &str) -> Client {
    claude_agent_http::tls::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header value"),
    );
    Client::builder()
        .default_headers(headers)
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// The storage a story's server keeps its sessions in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Sqlite,
    Postgresql,
    Memory,
}

impl Storage {
    /// The storage this run's stories use (`CLAUDE_AGENT_TEST_STORAGE`, SQLite by default).
    pub fn of_run() -> Storage {
        match std::env::var(STORAGE_VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => Storage::Sqlite,
            Ok("postgresql") => Storage::Postgresql,
            Ok("memory") => Storage::Memory,
            Ok(other) => panic!("{STORAGE_VARIABLE}={other}: expected sqlite, postgresql or memory"),
        }
    }

    /// The storage of this run for a story that restarts the service and expects its sessions
    /// back: on a memory run, SQLite (a memory store forgets by design).
    pub fn durable_of_run() -> Storage {
        match Storage::of_run() {
            Storage::Memory => Storage::Sqlite,
            durable => durable,
        }
    }
}

/// A running server and the folder it keeps its data in.
pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub client: Client,
    dir: TempDir,
    extra_yaml: String,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    /// The PostgreSQL database of a server on the `postgresql` storage; dropped after the server
    /// (whose `Drop` kills it first), kept across restarts.
    database: Option<TestDatabase>,
    /// The admin key the client sends, when the server requires authentication.
    pub admin_key: Option<String>,
    /// User keys made so far, by user (made on first use, through the admin endpoint).
    user_keys: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl TestServer {
    /// Starts a server on SQLite with `extra_yaml` appended to its config.
    pub async fn start(extra_yaml: &str) -> TestServer {
        Self::start_with_env(extra_yaml, Vec::new()).await
    }

    /// Starts a server with extra environment variables (e.g. where the model lives).
    pub async fn start_with_env(extra_yaml: &str, env: Vec<(String, String)>) -> TestServer {
        Self::start_wrapped(&[], extra_yaml, env).await
    }

    /// Starts the server binary as the last argument of `wrapper` (e.g. `unshare --pid --fork`),
    /// which must exec it with the arguments that follow.
    pub async fn start_wrapped(wrapper: &[&str], extra_yaml: &str, env: Vec<(String, String)>) -> TestServer {
        Self::start_on(Storage::of_run(), wrapper, extra_yaml, env).await
    }

    /// Starts a server for a story that restarts it and expects its sessions back: on the run's
    /// storage, or SQLite on a memory run.
    pub async fn start_durable(extra_yaml: &str, env: Vec<(String, String)>) -> TestServer {
        Self::start_on(Storage::durable_of_run(), &[], extra_yaml, env).await
    }

    /// Starts a server on `storage`, unless the story names a storage itself (in `extra_yaml` or
    /// `env`), which then wins.
    pub async fn start_on(
        storage: Storage,
        wrapper: &[&str],
        extra_yaml: &str,
        mut env: Vec<(String, String)>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        let named = extra_yaml.contains("storage:")
            || env.iter().any(|(key, _)| key == "CLAUDE_AGENT_SESSION_STORAGE");
        // A story that sets up authentication itself keeps it; the others run behind an admin key
        // on an authenticating run.
        let auth_named =
            extra_yaml.contains("auth:") || env.iter().any(|(key, _)| key.starts_with("CLAUDE_AGENT_AUTH"));
        if auth_of_run() && !auth_named {
            env.push(("CLAUDE_AGENT_AUTH__MODE".into(), "on".into()));
            env.push(("CLAUDE_AGENT_AUTH__ADMIN_KEY".into(), random_admin_key()));
        }
        let isolation_named = extra_yaml.contains("isolation:")
            || env
                .iter()
                .any(|(key, _)| key.starts_with("CLAUDE_AGENT_ISOLATION"));
        if let Some(profile) = isolation_of_run()
            && !isolation_named
        {
            env.push(("CLAUDE_AGENT_ISOLATION__PROFILE".into(), profile));
        }
        let mut database = None;
        if !named {
            match storage {
                Storage::Sqlite => {}
                Storage::Memory => env.push(("CLAUDE_AGENT_SESSION_STORAGE".into(), "memory".into())),
                Storage::Postgresql => {
                    let created = TestDatabase::create().await;
                    env.extend(server_env(&created.url()));
                    database = Some(created);
                }
            }
        }
        Self::start_in(dir, extra_yaml, env, wrapper, database).await
    }

    async fn start_in(
        dir: TempDir,
        extra_yaml: &str,
        env: Vec<(String, String)>,
        wrapper: Vec<String>,
        database: Option<TestDatabase>,
    ) -> TestServer {
        let admin_key = env
            .iter()
            .rev()
            .find(|(key, _)| key == "CLAUDE_AGENT_AUTH__ADMIN_KEY")
            .map(|(_, value)| value.clone());
        let config = dir.path().join("config.yaml");
        // Relative, as in the default configuration: the server runs in the test's folder.
        let yaml = format!("data_dir: ./data\n{extra_yaml}");
        std::fs::write(&config, yaml).expect("write config");
        let port_file = dir.path().join("port");
        let _ = std::fs::remove_file(&port_file);
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let binary = env!("CARGO_BIN_EXE_claude-agent-http");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        // SAFETY: only an async-signal-safe prctl between fork and exec: the server dies with the
        // test process even when the test runner kills it, so no server outlives its test.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                Ok(())
            });
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .arg("--port-file")
            .arg(&port_file)
            .env("RUST_LOG", "info,claude_agent_http=debug")
            .env("CLAUDE_AGENT_API_PORT", "0")
            // Agent servers name their CLI; the others must not install one into each temp folder.
            .env("CLAUDE_AGENT_DEFAULTS__CLI_AUTO_INSTALL", "false")
            .current_dir(dir.path())
            .env_remove("CLAUDE_AGENT_SESSION_STORAGE")
            // The test run's own switches are not the server's configuration.
            .env_remove(STORAGE_VARIABLE)
            .env_remove(AUTH_VARIABLE)
            .env_remove(ISOLATION_VARIABLE)
            .env_remove("CLAUDE_AGENT_TEST_CLI")
            // Whatever `claude` the developer has installed is not this server's business: agent
            // servers name the pinned CLI in their config, the others must find none.
            .env("PATH", path_without_claude(dir.path()))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn server");
        let mut server = TestServer {
            child: Some(child),
            base: String::new(),
            client: admin_key.as_deref().map_or_else(plain_client, client_with_key),
            dir,
            extra_yaml: extra_yaml.to_string(),
            env,
            wrapper,
            database,
            admin_key,
            user_keys: Default::default(),
        };
        let addr = server.wait_for_port(&port_file, Duration::from_secs(20)).await;
        server.base = format!("http://{addr}");
        server
    }

    /// Polls until the server wrote its port; a server that exits first fails with its log.
    async fn wait_for_port(&mut self, port_file: &Path, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(port_file)
                && !text.is_empty()
            {
                return text;
            }
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("the server exited at startup ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not listen within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The folder the server runs in (its config, log and data are here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// The environment the server was started with, beyond the test's own.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The server's data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's pid (as the host sees it; for a wrapped server, the server's, not the wrapper's).
    pub fn pid(&self) -> u32 {
        let child = self.child.as_ref().expect("running").id();
        if self.wrapper.is_empty() {
            return child;
        }
        let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_claude-agent-http")).expect("binary");
        super::procs::descendants(child)
            .into_iter()
            .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary))
            .expect("the wrapped server process")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it to exit; returns its exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        self.stop_with("-TERM")
    }

    /// Stops the server with the given `kill` signal option and waits; returns its exit status code.
    pub fn stop_with(&mut self, signal: &str) -> Option<i32> {
        self.child.as_ref()?;
        let target = self.pid();
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg(signal).arg(target.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and starts a new one on the same data folder and config.
    pub async fn restart(mut self) -> TestServer {
        self.stop();
        self.start_again().await
    }

    /// Kills the server with SIGKILL (no cleanup) and starts a new one on the same data.
    pub async fn crash_and_restart(mut self) -> TestServer {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        self.start_again().await
    }

    async fn start_again(mut self) -> TestServer {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let extra = self.extra_yaml.clone();
        let env = std::mem::take(&mut self.env);
        let wrapper = std::mem::take(&mut self.wrapper);
        let database = self.database.take();
        Self::start_in(dir, &extra, env, wrapper, database).await
    }

    /// A client acting as one user.
    pub fn user(&self, id: &str) -> User<'_> {
        User {
            server: self,
            id: id.to_string(),
        }
    }

    /// A user key for `user` (made through the admin endpoint on first use), when the server
    /// requires authentication.
    pub async fn user_key(&self, user: &str) -> Option<String> {
        self.admin_key.as_ref()?;
        if let Some(key) = self.user_keys.lock().unwrap().get(user) {
            return Some(key.clone());
        }
        let response = self
            .post(
                "/api/v1/admin/keys",
                json!({"role": "user", "user_id": user, "name": format!("test key of {user}")}),
            )
            .await;
        let body = expect_json(response, StatusCode::CREATED).await;
        let key = body["key"].as_str().expect("the new key").to_string();
        self.user_keys
            .lock()
            .unwrap()
            .insert(user.to_string(), key.clone());
        Some(key)
    }

    /// The client a user's requests go through: with its own user key when the server requires
    /// authentication, else the server's client.
    pub async fn client_of(&self, user: &str) -> Client {
        match self.user_key(user).await {
            Some(key) => client_with_key(&key),
            None => self.client.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client.delete(self.url(path)).send().await.expect("DELETE")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One user of the service.
pub struct User<'a> {
    pub server: &'a TestServer,
    pub id: String,
}

impl User<'_> {
    /// Creates a session (optionally in a subdir) and returns its JSON; panics unless 201.
    pub async fn create_session(&self, subdir: Option<&str>) -> Value {
        let response = self.try_create_session(subdir).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn try_create_session(&self, subdir: Option<&str>) -> Response {
        let mut body = json!({"user_id": self.id});
        if let Some(subdir) = subdir {
            body["subdir"] = json!(subdir);
        }
        self.client()
            .await
            .post(self.server.url("/api/v1/sessions"))
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// The client this user's requests go through (its own key on an authenticating server).
    pub async fn client(&self) -> Client {
        self.server.client_of(&self.id).await
    }

    /// The user's session ids.
    pub async fn session_ids(&self) -> Vec<String> {
        let response = self
            .client()
            .await
            .get(self.server.url(&format!("/api/v1/sessions?user_id={}", self.id)))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }
}

/// The test's PATH with every `claude` taken out: a folder holding one is replaced by a folder (in
/// `scratch`) of links to everything else in it.
fn path_without_claude(scratch: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .enumerate()
        .map(|(index, dir)| {
            if !dir.join("claude").exists() {
                return dir;
            }
            let copy = scratch.join(format!("path-{index}"));
            std::fs::create_dir_all(&copy).expect("PATH copy");
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_name() != "claude" {
                    let _ = std::os::unix::fs::symlink(entry.path(), copy.join(entry.file_name()));
                }
            }
            copy
        })
        .collect();
    std::env::join_paths(dirs).expect("PATH")
}

/// Reads a JSON body, asserting the status first.
pub async fn expect_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "unexpected status; body: {body}");
    body
}
