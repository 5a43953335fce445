//! The model relay: the only holder of the model API's credential. Every CLI gets a random token
//! of its own and an `ANTHROPIC_BASE_URL` that reaches this relay; the relay takes a request only
//! with a live token, only on the Messages API paths the CLI uses, swaps the token for the real
//! credential, forwards the request to the configured upstream and streams the answer back as it
//! comes. On the way through it reads each answer's usage and records one `UsageRecord` per
//! request (session, user, turn, model, tokens, cost from the price table, status, duration) in the
//! store: the place where usage is metered (meter.rs, pricing.rs). Before a request leaves, it
//! checks the user's, the session's and the turn's budgets (budget.rs) and refuses one that would
//! start over a limit.
//!
//! It listens on two shared endpoints, serving the same router: a loopback TCP port (the base URL
//! every CLI is given; all a CLI without isolation can reach) and a unix socket at
//! `<data_dir>/run/relay.sock`; any live token works there. A sandboxed CLI reaches neither: its
//! token is issued bound ([`Relay::issue_bound`]) with a socket of its own,
//! `<data_dir>/run/relay/<random>.sock` (root only), the one bound into its sandbox. That socket
//! knows its token, takes no other (a token learnt from another session is refused there and
//! logged) and is closed and removed with the token. Tokens live in memory only: a token lives as
//! long as the [`RelayToken`] value the runtime keeps beside the CLI process it was given to.
//!
//! It knows nothing of sessions' lives, processes or the service's HTTP API.

mod budget;
mod egress;
mod forward;
mod meter;
mod pricing;
mod usage;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use self::meter::{GrantState, Meters};
use crate::config::PricingConfig;
use crate::domain::{BudgetLimits, SessionId, TurnId};
use crate::store::UsageStore;
pub use budget::first_refusal;
pub use egress::{Egress, EgressSettings, proxy_url};
pub use meter::MeteredTurn;
pub use pricing::PriceTable;

/// What every token starts with, so a leaked one is recognisable (and never taken for a real key).
pub const TOKEN_PREFIX: &str = "cah_relay_";

/// Anthropic's API, the upstream when the service names none.
pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";

/// The socket's file name under the run directory.
const SOCKET_NAME: &str = "relay.sock";

/// The folder of the tokens' own sockets under the run directory.
const BOUND_DIR: &str = "relay";

/// How long connecting to the upstream may take (streams themselves have no time limit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The real credential the relay puts on forwarded requests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamCredential {
    /// `ANTHROPIC_API_KEY`, sent as `x-api-key`.
    pub api_key: Option<String>,
    /// `ANTHROPIC_AUTH_TOKEN`, sent as `Authorization: Bearer`.
    pub auth_token: Option<String>,
}

impl UpstreamCredential {
    /// Whether there is anything to send.
    pub fn is_present(&self) -> bool {
        self.api_key.is_some() || self.auth_token.is_some()
    }
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("UpstreamCredential")
            .field("api_key", &shown(&self.api_key))
            .field("auth_token", &shown(&self.auth_token))
            .finish()
    }
}

/// What the relay needs to start.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The Messages API it forwards to (the service's `ANTHROPIC_BASE_URL`, else Anthropic's).
    pub upstream: String,
    /// The real credential.
    pub credential: UpstreamCredential,
    /// Where the unix socket goes (`<data_dir>/run`; created 0711).
    pub run_dir: PathBuf,
    /// Token prices.
    pub pricing: PricingConfig,
    /// The service's budgets (users' overrides are read from the store).
    pub budgets: BudgetLimits,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The upstream is not an http(s) URL.
    #[error("the model API address {0:?} is not an http(s) URL")]
    Upstream(String),
    /// A listener or its directory could not be set up.
    #[error("the model relay cannot listen on {what}: {source}")]
    Listen {
        /// The address or path.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// The HTTP client could not be built.
    #[error("the model relay's HTTP client: {0}")]
    Client(String),
}

/// Who a live token was issued to, and its process's metering state.
#[derive(Clone)]
struct Grant {
    session: SessionId,
    user_id: String,
    state: Arc<GrantState>,
}

/// The token a session's own socket takes (and no other).
#[derive(Clone, Copy)]
struct Binding {
    /// The SHA-256 of the token.
    key: [u8; 32],
    /// Its session (for the log of a refusal).
    session: SessionId,
}

/// Live tokens, by the SHA-256 of the token (a lookup never compares secrets byte by byte).
type Tokens = Mutex<HashMap<[u8; 32], Grant>>;

/// The relay: its listeners run in the background; clones share everything.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
}

/// What the relay's handlers and its handle share.
struct Shared {
    tokens: Arc<Tokens>,
    upstream: reqwest::Url,
    credential: UpstreamCredential,
    client: reqwest::Client,
    meters: Arc<Meters>,
    prices: PriceTable,
    budgets: BudgetLimits,
    /// Requests relayed (and recorded) since the start.
    seen: AtomicU64,
    base_url: String,
    socket_path: PathBuf,
    /// Where bound tokens' sockets go (`<run_dir>/relay`, 0700).
    bound_dir: PathBuf,
    /// The egress proxy, once it runs: a bound token gets a proxy socket of its own too.
    egress: OnceLock<egress::BoundEgress>,
}

/// A token given to one CLI process. It is live until it is dropped or revoked: keep it exactly
/// as long as the process it was given to.
pub struct RelayToken {
    secret: String,
    key: [u8; 32],
    tokens: Weak<Tokens>,
    state: Arc<GrantState>,
    /// The token's own socket, when it is bound to one.
    socket: Option<BoundSocket>,
    /// A bound token's own egress proxy socket, where the service runs the proxy.
    egress_socket: Option<BoundSocket>,
}

/// A bound token's socket: its path and the task serving it.
struct BoundSocket {
    path: PathBuf,
    serving: tokio::task::AbortHandle,
}

impl RelayToken {
    /// The token, for the CLI's `ANTHROPIC_API_KEY`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The token's own socket (a bound token's), the only relay endpoint its sandbox is given.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_ref().map(|s| s.path.as_path())
    }

    /// The token's own egress proxy socket (a bound token's, where the proxy runs), the only
    /// proxy endpoint its sandbox is given.
    pub fn egress_socket(&self) -> Option<&Path> {
        self.egress_socket.as_ref().map(|s| s.path.as_path())
    }

    fn revoke(&self) {
        if let Some(tokens) = self.tokens.upgrade() {
            tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        }
        for socket in [&self.socket, &self.egress_socket].into_iter().flatten() {
            // Closed and gone: a forwarder still holding it bound in meets a refused connection.
            socket.serving.abort();
            let _ = std::fs::remove_file(&socket.path);
        }
    }
}

impl Drop for RelayToken {
    fn drop(&mut self) {
        self.revoke();
    }
}

impl std::fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayToken(<redacted>)")
    }
}

impl Relay {
    /// Binds both endpoints (127.0.0.1 on a free port, and the unix socket) and serves them in the
    /// background.
    /// Usage records go to `usage`, where users' budget overrides are read too.
    pub async fn start(settings: RelaySettings, usage: Arc<dyn UsageStore>) -> Result<Relay, RelayError> {
        let upstream = reqwest::Url::parse(settings.upstream.trim_end_matches('/'))
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| RelayError::Upstream(settings.upstream.clone()))?;
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Answers pass through as they are: a redirect is the client's business.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RelayError::Client(e.to_string()))?;
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| RelayError::Listen {
                what: "127.0.0.1:0".into(),
                source,
            })?;
        let addr: SocketAddr = tcp.local_addr().map_err(|source| RelayError::Listen {
            what: "127.0.0.1:0".into(),
            source,
        })?;
        let socket_path = settings.run_dir.join(SOCKET_NAME);
        let unix = bind_socket(&settings.run_dir, &socket_path).map_err(|source| RelayError::Listen {
            what: socket_path.display().to_string(),
            source,
        })?;
        let bound_dir = settings.run_dir.join(BOUND_DIR);
        prepare_bound_dir(&bound_dir).map_err(|source| RelayError::Listen {
            what: bound_dir.display().to_string(),
            source,
        })?;
        let shared = Arc::new(Shared {
            tokens: Arc::default(),
            upstream,
            credential: settings.credential,
            client,
            meters: Arc::new(Meters::new(usage)),
            prices: PriceTable::new(&settings.pricing),
            budgets: settings.budgets,
            seen: AtomicU64::new(0),
            base_url: format!("http://{addr}"),
            socket_path,
            bound_dir,
            egress: OnceLock::new(),
        });
        let router = forward::router(shared.clone(), None);
        let tcp = axum::serve::ListenerExt::tap_io(tcp, |stream: &mut tokio::net::TcpStream| {
            // Streamed answers go out event by event, never held back for a fuller segment.
            let _ = stream.set_nodelay(true);
        });
        let served = router.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, served).await {
                tracing::error!(error = %e, "the model relay stopped listening on its port");
            }
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(unix, router).await {
                tracing::error!(error = %e, "the model relay stopped listening on its socket");
            }
        });
        tracing::info!(
            relay.listen = %addr,
            relay.socket = %shared.socket_path.display(),
            relay.upstream = %shared.upstream,
            "the model relay is listening"
        );
        Ok(Relay { shared })
    }

    /// The `ANTHROPIC_BASE_URL` a CLI is given: `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The unix socket serving the same relay (`<data_dir>/run/relay.sock`).
    pub fn socket_path(&self) -> &Path {
        &self.shared.socket_path
    }

    /// Whether the service has a real credential to forward with (else no token is worth issuing).
    pub fn has_credential(&self) -> bool {
        self.shared.credential.is_present()
    }

    /// A new token for one CLI process of `session`, live until it is dropped or revoked.
    pub fn issue(&self, session: SessionId, user_id: &str) -> RelayToken {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source works");
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
        let key = token_key(&secret);
        let state = Arc::new(GrantState::default());
        let grant = Grant {
            session,
            user_id: user_id.to_string(),
            state: state.clone(),
        };
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, grant);
        RelayToken {
            secret,
            key,
            tokens: Arc::downgrade(&self.shared.tokens),
            state,
            socket: None,
            egress_socket: None,
        }
    }

    /// A new token for one sandboxed CLI process of `session`, with a socket of its own
    /// (`<data_dir>/run/relay/<random>.sock`, root only) that takes this token and no other; both
    /// live until the token is dropped or revoked. Call it within the tokio runtime.
    pub fn issue_bound(&self, session: SessionId, user_id: &str) -> Result<RelayToken, RelayError> {
        let mut token = self.issue(session, user_id);
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).expect("the operating system's random source works");
        let name = hex::encode(name);
        let path = self.shared.bound_dir.join(format!("{name}.sock"));
        // On failure the token is dropped here, so revoked (and a socket made is removed).
        let listener = bind_private_socket(&path).map_err(|source| RelayError::Listen {
            what: path.display().to_string(),
            source,
        })?;
        let binding = Binding {
            key: token.key,
            session,
        };
        let router = forward::router(self.shared.clone(), Some(binding));
        let serving = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(session.id = %session, error = %e, "the model relay stopped listening on a session's socket");
            }
        });
        token.socket = Some(BoundSocket {
            path,
            serving: serving.abort_handle(),
        });
        if let Some(egress) = self.shared.egress.get() {
            let path = self.shared.bound_dir.join(format!("{name}.egress.sock"));
            let listener = bind_private_socket(&path).map_err(|source| RelayError::Listen {
                what: path.display().to_string(),
                source,
            })?;
            token.egress_socket = Some(BoundSocket {
                path,
                serving: egress.serve(listener, binding),
            });
        }
        Ok(token)
    }

    /// From now on the requests of `token`'s process count for `turn`, whose sums start (or, for
    /// a turn handed to a new process, go on) here.
    pub fn begin_turn(&self, token: &RelayToken, turn: TurnId) {
        self.shared.meters.begin(turn);
        token.state.set_turn(Some(turn));
    }

    /// The turn's requests: waits up to `patience` for answers still streaming to end, then
    /// answers their sums (and a budget refusal, if one ended the turn) and stops metering it.
    /// `None` when none of its requests passed through the relay. Requests of `token`'s process
    /// count for no turn from now on.
    pub async fn settle_turn(
        &self,
        token: Option<&RelayToken>,
        turn: TurnId,
        patience: Duration,
    ) -> Option<MeteredTurn> {
        if let Some(token) = token {
            token.state.set_turn(None);
        }
        self.shared.meters.settle(turn, patience).await
    }

    /// Waits up to `patience` for every usage record to be stored (at shutdown).
    pub async fn flush(&self, patience: Duration) -> bool {
        self.shared.meters.flush(patience).await
    }

    /// The price table requests are costed with.
    pub fn prices(&self) -> &PriceTable {
        &self.shared.prices
    }

    /// Makes `token` useless at once (dropping it does the same).
    pub fn revoke(&self, token: &RelayToken) {
        token.revoke();
    }

    /// How many tokens are live.
    pub fn live_tokens(&self) -> usize {
        self.shared.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many requests have been relayed (and recorded) since the start.
    pub fn records_seen(&self) -> u64 {
        self.shared.seen.load(Ordering::Acquire)
    }
}

impl Shared {
    /// Who the token with this key was issued to, if it is live.
    fn grant_of(&self, key: &[u8; 32]) -> Option<Grant> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates the run directory (0711: others may pass through to the socket, not list it) and binds
/// the socket (0666: CLIs of other uids reach it only where it is bound in; they still need a
/// token), replacing one a previous instance left behind.
fn bind_socket(run_dir: &Path, socket: &Path) -> io::Result<tokio::net::UnixListener> {
    if let Some(parent) = run_dir.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o711).create(run_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(run_dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            run_dir.display()
        )));
    }
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711))?;
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(socket)?;
        }
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} exists and is not a socket",
                socket.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Creates the folder of the tokens' own sockets (0700: only the service and the sandboxes' inits,
/// both root, reach them) and removes the sockets a previous instance left in it.
fn prepare_bound_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", dir.display())));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_socket() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Binds a token's own socket, readable and writable by the service's user only.
fn bind_private_socket(path: &Path) -> io::Result<tokio::net::UnixListener> {
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
