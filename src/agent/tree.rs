//! The process tree under this service, read from `/proc`: the best-effort fallback for hosts
//! without usable cgroups (a session's processes are the descendants of its CLI and the carriers of
//! its marker variable; a tool that drops the marker and detaches escapes it), the service's own
//! memory, and reaping adopted zombies. Every function here walks `/proc` and blocks: call them
//! from blocking threads, never on async workers.

use std::collections::{HashMap, HashSet};
use std::fs;

use rustix::process::{Pid, Signal};

pub use super::command::SESSION_MARKER;

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
    marked_with(&format!("{SESSION_MARKER}={session}"), |var, needle| {
        var == needle
    })
}

/// Agent processes orphaned by a service that died without cleaning up (killed with SIGKILL, say):
/// marked processes adopted by init, with everything under them. A running instance is a
/// subreaper, so its own orphans are its children, never init's.
pub fn orphaned_agent_processes() -> HashSet<u32> {
    // As PID 1 (a container without an init), every agent's parent is this service itself: none
    // of them is an orphan, and a dead predecessor's processes died with the namespace.
    if rustix::process::getpid().is_init() {
        return HashSet::new();
    }
    let parents = parents();
    let roots = marked_with(&format!("{SESSION_MARKER}="), |var, prefix| {
        var.starts_with(prefix)
    })
    .into_iter()
    .filter(|pid| parents.get(pid) == Some(&1));
    roots
        .flat_map(|root| std::iter::once(root).chain(descendants(root)))
        .collect()
}

/// Kills what `orphaned_agent_processes` finds, saying so.
pub fn kill_orphaned_agent_processes() {
    let orphans = orphaned_agent_processes();
    if !orphans.is_empty() {
        tracing::warn!(
            count = orphans.len(),
            "killing agent processes left behind by a service that died"
        );
        kill_all(&orphans);
    }
}

fn marked_with(needle: &str, matches: impl Fn(&[u8], &[u8]) -> bool) -> Vec<u32> {
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
                .map(|env| env.split(|b| *b == 0).any(|var| matches(var, needle.as_bytes())))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills a session's processes the fallback way: the CLI's descendants and every process carrying
/// the session's marker, a few rounds (new ones may appear while killing).
pub fn kill_session_processes(session: &str, cli_pid: u32) {
    let mut members: HashSet<u32> = descendants(cli_pid).into_iter().collect();
    for _ in 0..10 {
        members.extend(marked(session));
        members.retain(|pid| *pid != cli_pid && is_alive(*pid));
        if members.is_empty() {
            break;
        }
        kill_all(&members);
        std::thread::sleep(std::time::Duration::from_millis(20));
        reap(&members);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_marked_processes_are_found_with_their_children() {
        let marker = format!("{SESSION_MARKER}=tree-test-{}", std::process::id());
        // sh starts a subshell running sleep in the background and exits: the subshell is orphaned.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("(sleep 30; true) &")
            .env(SESSION_MARKER, marker.split_once('=').unwrap().1)
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found: Vec<u32> = orphaned_agent_processes()
                .into_iter()
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                })
                .collect();
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        kill_all(&found.iter().copied().collect());
        assert!(found.len() >= 2, "the orphaned subshell and its sleep: {found:?}");
    }
}
