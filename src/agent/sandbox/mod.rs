//! The strict isolation profile: every CLI process runs in a sandbox of its own, built by our own
//! binary re-executed as `claude-agent-http __sandbox <plan-fd>` (see `inside.rs`):
//!
//! - as its user's uid/gid (no supplementary groups, no capabilities, `no_new_privs`);
//! - in new mount, pid, ipc, uts and network namespaces: a read-only root holding `/usr`, a few
//!   files of `/etc` and the CLI; a fresh `/proc`; a minimal `/dev`; a private `/tmp` (the
//!   session's `TMPDIR`, owned by the user); read-write only the user's workspace, the session's
//!   working directory and the user's CLI state, each bound from a descriptor the service opened
//!   without following links; a network namespace with only `lo`;
//! - under Landlock (the same file rules, TCP connect only to the relay port and the egress
//!   proxy's, no TCP bind, abstract unix sockets and signals scoped) and seccomp (`seccomp.rs`);
//! - in the session's cgroup (joined by the service between fork and exec, with its limits).
//!
//! The model API: the CLI's `ANTHROPIC_BASE_URL` must be `http://127.0.0.1:P` (or `localhost`).
//! Inside, the sandbox's init listens on `127.0.0.1:P` and forwards every connection to the
//! process's own relay socket (`<data_dir>/run/relay/<random>.sock`, which takes this process's
//! token and no other), else (no token: the service has no credential) to the shared
//! `<data_dir>/run/relay.sock` when it exists, else to `127.0.0.1:P` in the service's own network
//! namespace (a gateway or test stand-in on the host's loopback). Where the
//! service runs its egress proxy (`isolation.egress_allow`), the port of the CLI's `HTTPS_PROXY`
//! is forwarded the same way, always to a proxy socket: the process's own
//! (`<data_dir>/run/relay/<random>.egress.sock`, taking its token only), else the shared
//! `<data_dir>/run/egress.sock`. Nothing else is reachable.

mod inside;
mod plan;
mod seccomp;
mod sys;

use std::io::{Seek, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tokio::process::Child;

pub use inside::main as helper_main;
pub use plan::{Bind, Plan, Relay, Source, Upstream};

use super::launch::{Launch, LaunchError, Launcher, spawn_piped};

/// The hidden subcommand that runs the sandbox.
pub const SUBCOMMAND: &str = "__sandbox";

/// Files and folders of `/etc` the CLI and its tools read (when present).
const ETC: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "localtime",
    "timezone",
    "bash.bashrc",
    "profile",
    "profile.d",
    "inputrc",
    "environment",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "os-release",
    "gitconfig",
    "mime.types",
    "claude-code",
];

/// Top-level folders that a merged `/usr` makes links (else they are bound read-only).
const USR_MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What the sandboxing launcher is set up with.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// This binary (re-executed as the launcher).
    pub helper: PathBuf,
    /// An empty, root-only folder each sandbox mounts its root on (in its own mount namespace).
    pub staging: PathBuf,
    /// The service's shared relay socket; used when it exists and the process has no socket of
    /// its own (no token).
    pub relay_socket: PathBuf,
    /// The service's shared egress proxy socket, when it runs one (`isolation.egress_allow`):
    /// where the CLI's `HTTPS_PROXY` port is forwarded when the process has no proxy socket of
    /// its own.
    pub egress_socket: Option<PathBuf>,
    /// Size of each sandbox's private `/tmp`, MiB.
    pub tmp_mb: u64,
}

/// Starts each CLI in its own sandbox (the strict profile).
#[derive(Debug)]
pub struct SandboxLauncher {
    settings: SandboxSettings,
    system: Vec<Bind>,
    symlinks: Vec<(PathBuf, PathBuf)>,
}

impl SandboxLauncher {
    /// A launcher; creates the staging folder.
    pub fn new(settings: SandboxSettings) -> std::io::Result<SandboxLauncher> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.staging)?;
        let (system, symlinks) = system_binds(Path::new("/"));
        Ok(SandboxLauncher {
            settings,
            system,
            symlinks,
        })
    }

    /// The plan for one launch (`fds`: the descriptors it names, which the launcher inherits).
    fn plan(&self, launch: &Launch<'_>) -> Result<Plan, LaunchError> {
        let identity = launch
            .identity
            .as_ref()
            .ok_or_else(|| LaunchError::Sandbox("the session has no user identity (uid)".into()))?;
        let line = &launch.command;
        let mut binds = self.system.clone();
        binds.push(Bind {
            source: Source::Path(line.program.clone()),
            target: line.program.clone(),
            writable: false,
            exec: true,
        });
        // Plugin folders named on the command line, read-only.
        for pair in line.args.windows(2) {
            if pair[0] == "--plugin-dir" && Path::new(&pair[1]).is_absolute() {
                binds.push(Bind {
                    source: Source::Path(PathBuf::from(&pair[1])),
                    target: PathBuf::from(&pair[1]),
                    writable: false,
                    exec: true,
                });
            }
        }
        // Skipped where the system binds already show them (`/bin/true` is `/usr/bin/true`).
        let covered = |path: &Path| {
            self.system.iter().any(|b| path.starts_with(&b.target))
                || self.symlinks.iter().any(|(link, _)| path.starts_with(link))
        };
        for path in &identity.read_only {
            if path.is_absolute() && path.exists() && !covered(path) {
                binds.push(Bind {
                    source: Source::Path(path.clone()),
                    target: path.clone(),
                    writable: false,
                    exec: true,
                });
            }
        }
        let mut user: Vec<Bind> = identity
            .trees
            .iter()
            .filter(|(path, _)| path != &launch.cwd)
            .map(|(path, fd)| Bind {
                source: Source::Fd(fd.as_raw_fd()),
                target: path.clone(),
                writable: true,
                exec: true,
            })
            .collect();
        user.push(Bind {
            source: Source::Fd(launch.cwd_dir.as_raw_fd()),
            target: launch.cwd.clone(),
            writable: true,
            exec: true,
        });
        // Parents before children (the working directory inside the workspace).
        user.sort_by_key(|b| b.target.components().count());
        binds.extend(user);
        let mut env = line.env.clone();
        let mut set = |key: &str, value: &str| {
            env.retain(|(k, _)| k != key);
            env.push((key.into(), value.into()));
        };
        set("TMPDIR", "/tmp");
        set("CLAUDE_CODE_TMPDIR", "/tmp");
        // Forwarded to the proxy's socket only (never to a host port an inherited variable
        // names), and only where the service runs the proxy.
        let egress = launch
            .egress_socket
            .as_ref()
            .or(self
                .settings
                .egress_socket
                .as_ref()
                .filter(|socket| socket.exists()))
            .and_then(|socket| {
                let port = proxy_port(&env)?;
                (Some(port) != base_url_port(&env)).then(|| Relay {
                    port,
                    upstream: Upstream::Unix(socket.clone()),
                })
            });
        let relay = base_url_port(&env).map(|port| Relay {
            port,
            upstream: if let Some(own) = &launch.relay_socket {
                Upstream::Unix(own.clone())
            } else if self.settings.relay_socket.exists() {
                Upstream::Unix(self.settings.relay_socket.clone())
            } else {
                Upstream::HostTcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            },
        });
        Ok(Plan {
            uid: identity.uid,
            gid: identity.gid,
            program: line.program.clone(),
            args: line.args.clone(),
            env,
            cwd: launch.cwd.clone(),
            binds,
            symlinks: self.symlinks.clone(),
            staging: self.settings.staging.clone(),
            tmp_mb: self.settings.tmp_mb,
            relay,
            egress,
            landlock: true,
            seccomp: true,
        })
    }
}

impl Launcher for SandboxLauncher {
    fn launch(&self, launch: Launch<'_>) -> Result<Child, LaunchError> {
        let plan = self.plan(&launch)?;
        let file = plan_file(&plan).map_err(|e| LaunchError::Sandbox(format!("plan: {e}")))?;
        let mut inherit = vec![file.as_raw_fd(), launch.cwd_dir.as_raw_fd()];
        if let Some(identity) = &launch.identity {
            inherit.extend(identity.trees.iter().map(|(_, fd)| fd.as_raw_fd()));
        }
        let args = vec![SUBCOMMAND.to_string(), file.as_raw_fd().to_string()];
        let child = spawn_piped(&self.settings.helper, &args, &[], None, launch.cgroup, &inherit)?;
        drop(file);
        Ok(child)
    }
}

fn plan_file(plan: &Plan) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("sandbox-plan", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(
        serde_json::to_string(plan)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// The port of a loopback `ANTHROPIC_BASE_URL` (`http://127.0.0.1:P`, `http://localhost:P`).
fn base_url_port(env: &[(String, String)]) -> Option<u16> {
    loopback_port(env, "ANTHROPIC_BASE_URL")
}

/// The port of a loopback `HTTPS_PROXY` (`http://user:token@127.0.0.1:P`).
fn proxy_port(env: &[(String, String)]) -> Option<u16> {
    loopback_port(env, "HTTPS_PROXY")
}

/// The port of the variable `key` when it is an `http://` URL on loopback (credentials allowed).
fn loopback_port(env: &[(String, String)], key: &str) -> Option<u16> {
    let url = env.iter().find(|(k, _)| k == key)?.1.as_str();
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = authority.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then_some(())?;
    port.parse().ok()
}

/// `/usr` and its merged links, and the parts of `/etc` that exist, under `root`.
fn system_binds(root: &Path) -> (Vec<Bind>, Vec<(PathBuf, PathBuf)>) {
    let mut binds = vec![Bind {
        source: Source::Path(root.join("usr")),
        target: PathBuf::from("/usr"),
        writable: false,
        exec: true,
    }];
    let mut symlinks = Vec::new();
    for name in USR_MERGED {
        let host = root.join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(&host) {
                    symlinks.push((Path::new("/").join(name), target));
                }
            }
            Ok(meta) if meta.is_dir() => binds.push(Bind {
                source: Source::Path(host),
                target: Path::new("/").join(name),
                writable: false,
                exec: true,
            }),
            _ => {}
        }
    }
    for name in ETC {
        let host = root.join("etc").join(name);
        if host.exists() {
            binds.push(Bind {
                source: Source::Path(host),
                target: Path::new("/etc").join(name),
                writable: false,
                exec: false,
            });
        }
    }
    (binds, symlinks)
}

/// What the host lacks for the strict profile (empty: nothing), by running `helper __sandbox
/// probe` (it tries the namespaces and mounts for real).
pub fn probe(helper: &Path) -> Vec<String> {
    match super::launch::run_probe(helper) {
        Ok(lines) => lines,
        Err(e) => vec![format!("the sandbox launcher cannot run ({e})")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_port_comes_from_a_loopback_base_url_only() {
        let env = |url: &str| vec![("ANTHROPIC_BASE_URL".to_string(), url.to_string())];
        assert_eq!(base_url_port(&env("http://127.0.0.1:18237")), Some(18237));
        assert_eq!(base_url_port(&env("http://localhost:9/v1")), Some(9));
        assert_eq!(base_url_port(&env("https://api.anthropic.com")), None);
        assert_eq!(base_url_port(&env("http://10.0.0.1:80")), None);
        assert_eq!(base_url_port(&[]), None);
        let proxy = |url: &str| vec![("HTTPS_PROXY".to_string(), url.to_string())];
        assert_eq!(
            proxy_port(&proxy("http://cah:cah_relay_x@127.0.0.1:4100")),
            Some(4100)
        );
        assert_eq!(proxy_port(&proxy("http://10.0.0.1:3128")), None);
        assert_eq!(proxy_port(&proxy("http://u@evil:1@127.0.0.2:80")), None);
    }

    #[test]
    fn the_system_binds_are_read_only_and_never_name_a_users_tree() {
        let (binds, _) = system_binds(Path::new("/"));
        assert!(binds.iter().all(|b| !b.writable));
        assert!(binds.iter().any(|b| b.target == Path::new("/usr") && b.exec));
        assert!(binds.iter().all(|b| b.target.starts_with("/usr")
            || b.target.starts_with("/etc")
            || b.target.parent() == Some(Path::new("/"))));
    }
}
