//! The plan: everything the re-executed launcher (`claude-agent-http __sandbox`) needs to build one
//! sandbox and exec the CLI in it. The service writes it as JSON into a sealed memory file the
//! launcher inherits; the launcher reads nothing else (no config, no environment).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a bind mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A host path (system files: `/usr`, parts of `/etc`, the CLI).
    Path(PathBuf),
    /// An inherited descriptor, opened by the service without following links; bound through
    /// `/proc/self/fd/N`, so the path is never resolved again.
    Fd(i32),
}

/// One bind mount into the sandbox's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// What is mounted.
    pub source: Source,
    /// Where it appears inside (absolute).
    pub target: PathBuf,
    /// Read-write (else read-only).
    pub writable: bool,
    /// Programs under it may run (Landlock `Execute`; mounts are never `noexec` for these).
    pub exec: bool,
}

/// Where connections to the in-sandbox relay port go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upstream {
    /// The service's relay socket, bind-mounted where only the sandbox's init reaches it.
    Unix(PathBuf),
    /// A loopback TCP address in the service's network namespace, connected from there (used
    /// while a model gateway listens on the host's loopback and no relay socket exists).
    HostTcp(SocketAddr),
}

/// The in-sandbox end of the relay: `127.0.0.1:port` inside, forwarded to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// The port the CLI connects to (its `ANTHROPIC_BASE_URL`'s).
    pub port: u16,
    /// Where each connection is forwarded.
    pub upstream: Upstream,
}

/// One sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The user's uid (also the gid).
    pub uid: u32,
    /// The user's gid.
    pub gid: u32,
    /// The CLI.
    pub program: PathBuf,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// The working directory inside (a bind target).
    pub cwd: PathBuf,
    /// Mounts, parents before children.
    pub binds: Vec<Bind>,
    /// Symbolic links to create in the root (`(link, target)`), e.g. a merged `/usr`'s `/bin`.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// An empty host directory the sandbox's root tmpfs is mounted on (in its own mount
    /// namespace, so sandboxes share it without seeing each other).
    pub staging: PathBuf,
    /// Size of the private `/tmp` (MiB).
    pub tmp_mb: u64,
    /// The relay forwarding, if the CLI reaches its model API through one.
    pub relay: Option<Relay>,
    /// The egress proxy's forwarding (always to its unix socket), if the service runs one.
    pub egress: Option<Relay>,
    /// Enforce Landlock (hard requirement: failing to is an error).
    pub landlock: bool,
    /// Install the seccomp filter.
    pub seccomp: bool,
}

/// The path inside the sandbox where the relay socket is mounted (a root-only directory).
pub const RELAY_DIR: &str = "/run/sandbox";

/// The relay socket's name in [`RELAY_DIR`].
pub const RELAY_SOCKET: &str = "relay.sock";

/// The egress proxy socket's name in [`RELAY_DIR`].
pub const EGRESS_SOCKET: &str = "egress.sock";
