//! The host's processes as the tests see them in `/proc` (host pids, whatever namespace the server
//! runs in). Read here rather than through the service's own code, so a story about leaked processes
//! does not trust the code it checks.

use std::fs;

/// The environment variable the service sets on every agent process; its value is the session id.
pub const SESSION_MARKER: &str = "CLAUDE_AGENT_HTTP_SESSION";

/// Every pid on the host, except this test process.
pub fn pids() -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|&pid| pid != me)
                .collect()
        })
        .unwrap_or_default()
}

/// The command line of a process, arguments joined by spaces (empty once it is gone).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The state letter and parent of a process from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_string();
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// Whether a process is stopped (SIGSTOP).
pub fn is_stopped(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state == "T")
}

/// Every living descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|pid| stat(pid).map(|(_, parent)| (pid, parent)))
        .collect();
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &(child, _) in parents.iter().filter(|(_, parent)| *parent == pid) {
            found.push(child);
            queue.push(child);
        }
    }
    found.retain(|pid| is_alive(*pid));
    found
}

/// A process's environment, `NAME=value` each (empty once it is gone).
pub fn environ(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of one variable in a process's environment.
pub fn env_var(pid: u32, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    environ(pid)
        .into_iter()
        .find_map(|v| v.strip_prefix(&prefix).map(str::to_string))
}

/// Whether a process's environment holds exactly `variable` (`NAME=value`).
fn has_env(pid: u32, variable: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == variable.as_bytes()))
}

/// Living processes that carry the session's marker variable (the CLI and the tools it started,
/// unless a tool dropped the marker).
pub fn marked(session: &str) -> Vec<u32> {
    let marker = format!("{SESSION_MARKER}={session}");
    pids()
        .into_iter()
        .filter(|pid| has_env(*pid, &marker) && is_alive(*pid))
        .collect()
}

/// Living processes whose command line contains `text`.
pub fn mentioning(text: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| cmdline(*pid).contains(text) && is_alive(*pid))
        .collect()
}

/// The session's CLI processes: their argv names the session (`--session-id=<id>` or
/// `--resume=<id>`). At most one is the rule.
pub fn clis(session: &str) -> Vec<u32> {
    let created = format!("--session-id={session}");
    let resumed = format!("--resume={session}");
    pids()
        .into_iter()
        .filter(|pid| {
            let line = cmdline(*pid);
            line.contains(&created) || line.contains(&resumed)
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

/// Everything that still belongs to a session by any sign: its marker, or its id on a command line.
pub fn of_session(session: &str) -> Vec<u32> {
    let mut found = marked(session);
    found.extend(mentioning(session));
    found.sort_unstable();
    found.dedup();
    found
}

/// Resident memory of a process in bytes (`VmRSS`), if it still exists.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sends a signal (`kill` option: `-STOP`, `-9`, ...) to one process.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Kills, when dropped, every process whose command line contains its text: a story about a leak
/// must not leave the leak behind when it fails.
pub struct KillOnDrop(pub String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in mentioning(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}
