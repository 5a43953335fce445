//! A cgroup per session: where its processes live, what they use, and how they all die.
//!
//! Membership, memory accounting and killing come from the kernel's cgroup files, not from `/proc`
//! scans: a tool that detaches (`setsid`, double fork) or scrubs its environment is still in its
//! session's cgroup, so stopping the session kills it.
//!
//! Two kinds of host are supported:
//! - cgroup v2, when the `pids` or `memory` controller is on the unified hierarchy: one directory
//!   per session; `cgroup.kill` kills everything in it at once.
//! - cgroup v1, when those controllers are mounted as separate hierarchies under
//!   `/sys/fs/cgroup/<controller>` (this is what CI has): one directory per session in each of the
//!   `pids`, `memory` and `cpu` hierarchies; killing is SIGKILL of every member until none is left
//!   (the `pids` hierarchy lists them).
//!
//! Every session directory sits under an instance directory named after the service's data
//! directory, itself under the service's own cgroup: a restarted instance finds and kills what a
//! predecessor on the same data left behind, and never touches another instance's sessions.
//! This module must not know sessions beyond their id, nor anything of HTTP or the store.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// Where the cgroup file systems are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a session gets a directory in (those that are mounted).
const V1_CONTROLLERS: [&str; 3] = ["pids", "memory", "cpu"];

/// Which cgroup interface this host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy with controllers.
    V2,
    /// Separate per-controller hierarchies.
    V1,
}

/// The cgroups of this service instance: one directory per hierarchy, holding one per session.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    version: CgroupVersion,
    /// Instance directories, one per hierarchy (v2: exactly one). The first one lists members.
    instance_dirs: Vec<PathBuf>,
    /// The instance directory of the memory controller, if mounted.
    memory_dir: Option<PathBuf>,
}

/// One session's cgroup.
#[derive(Debug)]
pub struct SessionCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
}

/// Why no cgroup could be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither v2 controllers nor v1 hierarchies are usable here.
    #[error("no usable cgroup hierarchy (v2 with pids/memory controllers, or v1 pids/memory mounts)")]
    Unavailable,
    /// A cgroup file or directory could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// This process's cgroup path in the hierarchy of `controller` (`""` for v2), from /proc/self/cgroup.
fn own_path(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.trim_start_matches('/').to_string())
    })
}

/// A short, stable name for an instance: FNV-1a of its data directory. Stable across builds
/// (the standard library's hasher is not), so a restarted instance finds its predecessor's cgroups.
pub fn instance_key(data_dir: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("claude-agent-http-{:012x}", hash & 0xffff_ffff_ffff)
}

fn v2_mount() -> Option<PathBuf> {
    [
        PathBuf::from(CGROUP_MOUNT),
        Path::new(CGROUP_MOUNT).join("unified"),
    ]
    .into_iter()
    .find(|dir| dir.join("cgroup.controllers").is_file())
}

/// Whether `own` is the root of a cgroup namespace rather than of the host: a container's own
/// cgroup namespace (Docker's default on cgroup v2) shows its cgroup as the mount's root (`0::/`),
/// but it is an ordinary cgroup, bound by the no-internal-processes rule, and only non-root
/// cgroups have `cgroup.type`.
fn is_namespace_root(own: &Path, mount: &Path) -> bool {
    own == mount && own.join("cgroup.type").is_file()
}

fn v2_has_controllers(mount: &Path) -> bool {
    fs::read_to_string(mount.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids" || c == "memory"))
}

impl CgroupRoot {
    /// Finds the host's cgroups and creates this instance's directories in them.
    pub fn open(instance: &str) -> Result<CgroupRoot, CgroupError> {
        if let Some(mount) = v2_mount().filter(|m| v2_has_controllers(m)) {
            return Self::open_v2(&mount, instance);
        }
        Self::open_v1(instance)
    }

    fn open_v2(mount: &Path, instance: &str) -> Result<CgroupRoot, CgroupError> {
        let own = mount.join(own_path("").unwrap_or_default());
        // A v2 cgroup with processes cannot give controllers to children ("no internal
        // processes"): outside the root, the service moves itself into a leaf first.
        let namespace_root = is_namespace_root(&own, mount);
        if own != mount || namespace_root {
            let leaf = own.join("service");
            fs::create_dir_all(&leaf).map_err(io_error("create", &leaf))?;
            let procs = leaf.join("cgroup.procs");
            fs::write(&procs, std::process::id().to_string()).map_err(io_error("join", &procs))?;
            if namespace_root {
                // A container's cgroup: everything in it moves along (its init, when that is not
                // the service; `docker exec` then joins the init's cgroup). Best effort: a process
                // may be gone already.
                for pid in fs::read_to_string(own.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    let _ = fs::write(&procs, pid.trim());
                }
            }
        }
        let instance_dir = own.join(instance);
        fs::create_dir_all(&instance_dir).map_err(io_error("create", &instance_dir))?;
        let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        let enable: String = available
            .split_whitespace()
            .filter(|c| matches!(*c, "pids" | "memory" | "cpu"))
            .map(|c| format!("+{c} "))
            .collect();
        for dir in [&own, &instance_dir] {
            let control = dir.join("cgroup.subtree_control");
            // Best effort: without a controller, membership and cgroup.kill still work.
            if let Err(e) = fs::write(&control, enable.trim()) {
                tracing::debug!(path = %control.display(), error = %e, "cannot enable cgroup controllers");
            }
        }
        Ok(CgroupRoot {
            version: CgroupVersion::V2,
            memory_dir: Some(instance_dir.clone()),
            instance_dirs: vec![instance_dir],
        })
    }

    fn open_v1(instance: &str) -> Result<CgroupRoot, CgroupError> {
        let mut instance_dirs = Vec::new();
        let mut memory_dir = None;
        for controller in V1_CONTROLLERS {
            let mount = Path::new(CGROUP_MOUNT).join(controller);
            if !mount.join("tasks").is_file() {
                continue;
            }
            let dir = mount
                .join(own_path(controller).unwrap_or_default())
                .join(instance);
            fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
            if controller == "memory" {
                memory_dir = Some(dir.clone());
            }
            instance_dirs.push(dir);
        }
        // Membership is read from the first hierarchy: it must be pids or memory, which every
        // process is charged to; cpu alone would do too, but then there is no accounting at all.
        if memory_dir.is_none()
            && !instance_dirs
                .iter()
                .any(|d| d.starts_with(Path::new(CGROUP_MOUNT).join("pids")))
        {
            return Err(CgroupError::Unavailable);
        }
        Ok(CgroupRoot {
            version: CgroupVersion::V1,
            instance_dirs,
            memory_dir,
        })
    }

    /// Which interface is in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates (or takes over) the cgroup of one session.
    pub fn session(&self, name: &str) -> Result<SessionCgroup, CgroupError> {
        let dirs: Vec<PathBuf> = self.instance_dirs.iter().map(|d| d.join(name)).collect();
        for dir in &dirs {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        }
        Ok(SessionCgroup {
            version: self.version,
            memory_dir: self.memory_dir.as_ref().map(|d| d.join(name)),
            dirs,
        })
    }

    /// Memory charged to every session of this instance, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_dir.as_deref().map(read_memory).unwrap_or_default()
    }

    /// Kills and removes session cgroups left by an instance that died on the same data; returns
    /// how many held processes.
    pub fn kill_leftovers(&self) -> usize {
        let Some(first) = self.instance_dirs.first() else {
            return 0;
        };
        let Ok(entries) = fs::read_dir(first) else {
            return 0;
        };
        let mut with_processes = 0;
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(cgroup) = self.session(&name) else {
                continue;
            };
            if !cgroup.pids().is_empty() {
                with_processes += 1;
            }
            cgroup.kill_all();
            cgroup.remove_when_empty();
        }
        with_processes
    }

    /// Removes this instance's cgroups (at shutdown, once every session is stopped).
    pub fn remove(&self) {
        self.kill_leftovers();
        for dir in &self.instance_dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn read_memory(dir: &Path) -> u64 {
    ["memory.current", "memory.usage_in_bytes"]
        .iter()
        .find_map(|file| fs::read_to_string(dir.join(file)).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_default()
}

/// Resource limits of one session's cgroup (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Processes and threads (`pids.max`).
    pub pids_max: u32,
    /// Memory, bytes (`memory.max`; v1 `memory.limit_in_bytes`).
    pub memory_max_bytes: u64,
    /// CPU, percent of one CPU (`cpu.max`; v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`).
    pub cpu_percent: u32,
}

/// The CFS period the CPU limit is expressed in (µs).
const CPU_PERIOD_US: u64 = 100_000;

impl SessionCgroup {
    /// Applies `limits` (before anything joins). A limit whose controller this host lacks is an
    /// error: the caller promised it.
    pub fn limit(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let write = |dir: &Path, file: &str, value: String| -> Result<(), CgroupError> {
            let path = dir.join(file);
            fs::write(&path, value).map_err(io_error("write", &path))
        };
        let controller = |name: &str| -> Result<&Path, CgroupError> {
            match self.version {
                CgroupVersion::V2 => self.dirs.first().map(PathBuf::as_path),
                CgroupVersion::V1 => self
                    .dirs
                    .iter()
                    .find(|d| d.starts_with(Path::new(CGROUP_MOUNT).join(name)))
                    .map(PathBuf::as_path),
            }
            .ok_or(CgroupError::Unavailable)
        };
        let v2 = self.version == CgroupVersion::V2;
        if limits.pids_max > 0 {
            write(controller("pids")?, "pids.max", limits.pids_max.to_string())?;
        }
        if limits.memory_max_bytes > 0 {
            let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
            write(controller("memory")?, file, limits.memory_max_bytes.to_string())?;
            if v2 {
                // No swapping around the limit.
                let _ = write(controller("memory")?, "memory.swap.max", "0".into());
            }
        }
        if limits.cpu_percent > 0 {
            let quota = CPU_PERIOD_US * u64::from(limits.cpu_percent) / 100;
            let dir = controller("cpu")?;
            if v2 {
                write(dir, "cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                write(dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                write(dir, "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        Ok(())
    }

    /// Open `cgroup.procs` files for the child to write itself into between fork and exec (so it
    /// is a member before it can start anything).
    pub fn join_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(io_error("open", &path))
            })
            .collect()
    }

    /// Moves an existing process in (for processes not started by us, e.g. in tests).
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
                .map_err(io_error("join", &path))?;
        }
        Ok(())
    }

    /// Every process in the session now.
    pub fn pids(&self) -> Vec<u32> {
        self.dirs
            .first()
            .and_then(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Memory charged to the session, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_dir.as_deref().map(read_memory).unwrap_or_default()
    }

    /// Kills every process in the session, detached or not, and returns once none is left (or
    /// after a bounded number of rounds). Blocking, but cheap: a few small file reads.
    pub fn kill_all(&self) {
        if self.version == CgroupVersion::V2
            && let Some(dir) = self.dirs.first()
            && fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            self.wait_empty();
            return;
        }
        // v1 has no cgroup.kill: SIGKILL every member until none is left. A process forking
        // between the read and the kill is caught by the next round.
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                if let Some(pid) = Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::warn!(cgroup = %self.dirs[0].display(), "processes survive repeated SIGKILL");
    }

    fn wait_empty(&self) {
        for _ in 0..200 {
            if self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the session's directories; false while one is still busy (a member not yet
    /// reaped keeps it, even when `cgroup.procs` no longer lists it).
    pub fn remove(&self) -> bool {
        let mut removed = true;
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::trace!(cgroup = %dir.display(), error = %e, "cannot remove a session cgroup yet");
                removed = false;
            }
        }
        removed
    }

    /// Removes the session's directories, waiting (up to about 3 s) for exited members to be reaped.
    pub fn remove_when_empty(&self) {
        for attempt in 0..30u64 {
            if self.remove() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10 * (attempt + 1)));
        }
        tracing::warn!(cgroup = %self.dirs[0].display(), "a session cgroup stays busy; the next start on this data removes it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_are_stable_and_distinct() {
        let a = instance_key(Path::new("/var/lib/a"));
        assert_eq!(a, instance_key(Path::new("/var/lib/a")));
        assert_ne!(a, instance_key(Path::new("/var/lib/b")));
        assert!(a.starts_with("claude-agent-http-"));
    }

    /// The host's root cgroup has no `cgroup.type`; a container's namespace root (a cgroup of the
    /// host seen as `/`) has one, and so does any cgroup below the mount.
    #[test]
    fn a_namespace_root_is_told_from_the_hosts_root() {
        let mount = tempfile::tempdir().unwrap();
        assert!(!is_namespace_root(mount.path(), mount.path()));
        std::fs::write(mount.path().join("cgroup.type"), "domain\n").unwrap();
        assert!(is_namespace_root(mount.path(), mount.path()));
        let below = mount.path().join("system.slice");
        std::fs::create_dir(&below).unwrap();
        std::fs::write(below.join("cgroup.type"), "domain\n").unwrap();
        assert!(!is_namespace_root(&below, mount.path()));
    }

    /// On a host with cgroups (CI has v1), a detached process that left its parent is still a
    /// member, and killing the cgroup kills it.
    #[test]
    fn killing_a_session_cgroup_kills_detached_members() {
        let Ok(root) = CgroupRoot::open(&format!("claude-agent-http-unit-{}", std::process::id())) else {
            eprintln!("no cgroups on this host; skipped");
            return;
        };
        let cgroup = root.session("unit").expect("session cgroup");
        // The shell waits for a line, so it is a member before it starts anything.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read go; setsid sleep 300 >/dev/null 2>&1 & sleep 300")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        cgroup.add(child.id()).unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cgroup.pids().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let members = cgroup.pids();
        assert!(
            members.len() >= 3,
            "the shell, its sleep and the detached sleep: {members:?}"
        );
        cgroup.kill_all();
        assert!(cgroup.pids().is_empty());
        let _ = child.wait();
        for pid in members {
            assert!(!crate::agent::tree::is_alive(pid), "{pid} survived");
        }
        cgroup.remove();
        for dir in &root.instance_dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}
