//! The spawn seam: the one place that turns a command line, a working directory and a cgroup into a
//! running process. `DirectLauncher` runs the CLI as the service's own user; a sandboxing launcher
//! (own uid, namespaces, Landlock, seccomp) is another implementation of the same trait.
//! Nothing else in the crate builds a `Command` for an agent.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use rustix::process::Signal;
use tokio::process::{Child, Command};

use super::cgroup::SessionCgroup;
use super::command::CommandLine;

/// What a launcher needs to start one agent process.
pub struct Launch<'a> {
    /// Program, arguments and the complete environment.
    pub command: CommandLine,
    /// The working directory, opened without following links; the child enters it by descriptor.
    pub cwd_dir: OwnedFd,
    /// The session's cgroup, which the child joins before it runs anything.
    pub cgroup: Option<&'a SessionCgroup>,
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
        } = launch;
        let join = match cgroup {
            Some(cgroup) => cgroup.join_files()?,
            None => Vec::new(),
        };
        let mut command = Command::new(&line.program);
        command
            .args(&line.args)
            .env_clear()
            .envs(line.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // Dropping an `AgentProcess` kills its whole session (cgroup); this is the backstop
            // for the CLI itself.
            .kill_on_drop(true);
        let cwd_fd = cwd_dir.as_raw_fd();
        let join_fds: Vec<i32> = join.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: between fork and exec only async-signal-safe system calls run, on descriptors
        // opened before the fork and kept open until `spawn` returns: joining the session's cgroup
        // (writing "0" to `cgroup.procs` moves the writer), entering the workspace by descriptor
        // (a link swapped in since it was checked is never followed), and asking for SIGKILL when
        // the parent dies. PDEATHSIG fires when the *thread* that forked exits: `launch` is called
        // from the session's actor, a task on tokio's long-lived worker threads, never from
        // `spawn_blocking` (whose threads retire when idle).
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                for fd in &join_fds {
                    let file = rustix::fd::BorrowedFd::borrow_raw(*fd);
                    rustix::io::write(file, b"0")?;
                }
                let dir = rustix::fd::BorrowedFd::borrow_raw(cwd_fd);
                rustix::process::fchdir(dir)?;
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| LaunchError::Spawn {
            program: line.program.display().to_string(),
            source,
        })?;
        drop(join);
        drop(cwd_dir);
        Ok(child)
    }
}
