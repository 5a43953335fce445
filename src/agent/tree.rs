//! The process tree under this service, read from `/proc`: memory accounting, and finding every
//! process that belongs to a session (descendants of its CLI, or carriers of its marker variable,
//! which survives reparenting) so that none outlives the session.

use std::collections::{HashMap, HashSet};
use std::fs;

use rustix::process::{Pid, Signal};

/// The environment variable set on every agent process; its value is the session id.
pub const SESSION_MARKER: &str = "CLAUDE_AGENT_HTTP_SESSION";

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Resident memory of one process in bytes, if it still exists.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * page_size())
}

/// The parent of every process on the machine (a snapshot).
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return map;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses; fields resume after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// Resident memory of this service plus all its descendants, in bytes.
pub fn service_memory_bytes() -> u64 {
    let me = std::process::id();
    std::iter::once(me)
        .chain(descendants(me))
        .filter_map(rss_bytes)
        .sum()
}

/// Processes whose environment carries `SESSION_MARKER=<session>`.
pub fn marked(session: &str) -> Vec<u32> {
    let needle = format!("{SESSION_MARKER}={session}");
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Sends SIGKILL to every listed process that still exists.
pub fn kill_all(pids: &HashSet<u32>) {
    for &pid in pids {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// Makes this process the reaper of orphaned descendants, so tools an agent started cannot escape
/// to init when their CLI dies.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Waits on the listed zombie children (only those: `tokio::process` collects its own).
fn reap(orphans: &HashSet<u32>) {
    for &pid in orphans {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Reaps zombie children of this process that tokio does not own (orphans we adopted as
/// subreaper); `owned` are the pids whose status `tokio::process` collects itself.
pub fn reap_zombie_children(owned: &HashSet<u32>) {
    let me = std::process::id();
    let zombies: HashSet<u32> = parents()
        .into_iter()
        .filter(|(pid, ppid)| *ppid == me && !owned.contains(pid) && !is_alive(*pid))
        .map(|(pid, _)| pid)
        .collect();
    reap(&zombies);
}
