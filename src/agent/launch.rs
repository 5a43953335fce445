//! The spawn seam: the one place that turns a command line, a working directory and a cgroup into a
//! running process. `DirectLauncher` runs the CLI as the service's own user; a sandboxing launcher
//! (own uid, namespaces, Landlock, seccomp) is another implementation of the same trait.
//! Nothing else in the crate builds a `Command` for an agent.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::process::Signal;
use tokio::process::{Child, Command};

use super::cgroup::SessionCgroup;
use super::command::CommandLine;

/// The operating-system identity a sandboxed process runs as, and the user's trees it may write.
#[derive(Debug)]
pub struct Identity {
    /// The user's uid.
    pub uid: u32,
    /// The user's gid.
    pub gid: u32,
    /// The user's writable trees (workspace root, CLI state), each with its path and a descriptor
    /// opened without following links: a sandbox binds the descriptor, never the path.
    pub trees: Vec<(PathBuf, OwnedFd)>,
    /// Host files and folders the operator configured for every agent (MCP servers' programs
    /// and scripts), shown read-only at the same path.
    pub read_only: Vec<PathBuf>,
}

/// What a launcher needs to start one agent process.
pub struct Launch<'a> {
    /// Program, arguments and the complete environment.
    pub command: CommandLine,
    /// The working directory's path (where a sandbox shows it).
    pub cwd: PathBuf,
    /// The working directory, opened without following links; the child enters it by descriptor.
    pub cwd_dir: OwnedFd,
    /// The session's cgroup, which the child joins before it runs anything.
    pub cgroup: Option<&'a SessionCgroup>,
    /// The user's identity, where users are isolated (a sandboxing launcher requires it).
    pub identity: Option<Identity>,
    /// The process's own relay socket (its token's), which a sandbox forwards the relay port to.
    pub relay_socket: Option<PathBuf>,
    /// The process's own egress proxy socket, which a sandbox forwards the proxy port to.
    pub egress_socket: Option<PathBuf>,
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The cgroup could not be prepared.
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
    /// fork/exec failed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The executable.
        program: String,
        /// The system error.
        source: std::io::Error,
    },
    /// The sandbox could not be planned.
    #[error("sandbox: {0}")]
    Sandbox(String),
}

/// Starts agent processes; piped stdin, stdout and stderr.
pub trait Launcher: Send + Sync {
    /// Starts the process described by `launch`.
    fn launch(&self, launch: Launch<'_>) -> Result<Child, LaunchError>;
}

/// Runs the CLI as the service's user, in its own process group and its session's cgroup, dying
/// with the service.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectLauncher;

impl Launcher for DirectLauncher {
    fn launch(&self, launch: Launch<'_>) -> Result<Child, LaunchError> {
        let Launch {
            command: line,
            cwd_dir,
            cgroup,
            ..
        } = launch;
        let child = spawn_piped(&line.program, &line.args, &line.env, Some(&cwd_dir), cgroup, &[])?;
        drop(cwd_dir);
        Ok(child)
    }
}

/// Spawns `program` with exactly `env`, piped stdio, in its own process group, dying with the
/// service; between fork and exec it joins `cgroup`, enters `cwd` (by descriptor) and keeps the
/// descriptors `inherit` open across exec.
pub(crate) fn spawn_piped(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    cwd: Option<&OwnedFd>,
    cgroup: Option<&SessionCgroup>,
    inherit: &[i32],
) -> Result<Child, LaunchError> {
    let join = match cgroup {
        Some(cgroup) => cgroup.join_files()?,
        None => Vec::new(),
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Dropping an `AgentProcess` kills its whole session (cgroup); this is the backstop
        // for the CLI itself.
        .kill_on_drop(true);
    let cwd_fd = cwd.map(AsRawFd::as_raw_fd);
    let join_fds: Vec<i32> = join.iter().map(AsRawFd::as_raw_fd).collect();
    let inherit = inherit.to_vec();
    // SAFETY: between fork and exec only async-signal-safe system calls run, on descriptors
    // opened before the fork and kept open until `spawn` returns (the caller holds `cwd` and the
    // `inherit` descriptors until then): joining the session's cgroup (writing "0" to
    // `cgroup.procs` moves the writer), entering the workspace by descriptor (a link swapped in
    // since it was checked is never followed), clearing close-on-exec on the descriptors a
    // sandbox launcher inherits, and asking for SIGKILL when the parent dies. PDEATHSIG fires
    // when the *thread* that forked exits: `launch` is called from the session's actor, a task
    // on tokio's long-lived worker threads, never from `spawn_blocking` (whose threads retire
    // when idle).
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            for fd in &join_fds {
                let file = rustix::fd::BorrowedFd::borrow_raw(*fd);
                rustix::io::write(file, b"0")?;
            }
            if let Some(fd) = cwd_fd {
                let dir = rustix::fd::BorrowedFd::borrow_raw(fd);
                rustix::process::fchdir(dir)?;
            }
            for fd in &inherit {
                let fd = rustix::fd::BorrowedFd::borrow_raw(*fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| LaunchError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    drop(join);
    Ok(child)
}

/// Runs `helper __sandbox probe` and returns what it says is missing (one item per line).
pub(crate) fn run_probe(helper: &Path) -> std::io::Result<Vec<String>> {
    let output = std::process::Command::new(helper)
        .args([super::sandbox::SUBCOMMAND, "probe"])
        .env_clear()
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "probe exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}
