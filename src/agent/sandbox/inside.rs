//! The re-executed launcher (`claude-agent-http __sandbox <plan-fd>`), in three processes:
//!
//! 1. the launcher itself (the service's child, in the host's pid namespace): unshares the mount,
//!    pid, ipc and uts namespaces, forks the sandbox's init and exits as it exits (same code or
//!    signal), so the service sees the CLI's exit;
//! 2. init (pid 1 of the new pid namespace): a new network namespace with `lo` up, the new root
//!    (tmpfs, read-only binds, the user's trees read-write, fresh `/proc`, minimal `/dev`, private
//!    `/tmp`), `pivot_root`; the relay forwarder (and the egress proxy's); forks the CLI, reaps every zombie and exits
//!    when the CLI exits (which ends every other process of the namespace);
//! 3. the CLI: empty bounding set, no groups, the user's gid and uid (no capabilities left),
//!    `no_new_privs`, Landlock, seccomp, then `execve`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Signal, WaitOptions};
use rustix::thread::UnshareFlags;

use super::plan::{Bind, EGRESS_SOCKET, Plan, RELAY_DIR, RELAY_SOCKET, Source, Upstream};
use super::{seccomp, sys};

/// Exit code of a launcher that could not build the sandbox.
const SETUP_FAILED: i32 = 125;
/// The Landlock ABI the strict profile needs (scopes).
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// Entry point of `__sandbox`: never returns.
pub fn main(args: &[String]) -> ! {
    let code = match args.first().map(String::as_str) {
        Some("probe") => probe(),
        Some(fd) => match fd.parse::<i32>() {
            Ok(fd) => launcher(fd),
            Err(_) => fail("usage: __sandbox <plan-fd> | probe"),
        },
        None => fail("usage: __sandbox <plan-fd> | probe"),
    };
    std::process::exit(code)
}

fn fail(why: &str) -> i32 {
    let _ = writeln!(std::io::stderr(), "claude-agent-http sandbox: {why}");
    SETUP_FAILED
}

fn read_plan(fd: i32) -> Result<Plan, String> {
    let fd = sys::adopt_fd(fd).map_err(|e| format!("plan: {e}"))?;
    let mut file = fs::File::from(fd);
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| format!("plan: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("plan: {e}"))
}

fn launcher(plan_fd: i32) -> i32 {
    let plan = match read_plan(plan_fd) {
        Ok(plan) => plan,
        Err(e) => return fail(&e),
    };
    let cwd_fds: Vec<OwnedFd> = match plan
        .binds
        .iter()
        .filter_map(|b| match b.source {
            Source::Fd(fd) => Some(sys::adopt_fd(fd)),
            Source::Path(_) => None,
        })
        .collect::<Result<_, _>>()
    {
        Ok(fds) => fds,
        Err(e) => return fail(&format!("workspace descriptor: {e}")),
    };
    // Open for the init's binds, never inherited by the CLI.
    for fd in &cwd_fds {
        if let Err(e) = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC) {
            return fail(&format!("workspace descriptor: {e}"));
        }
    }
    // The user's trees, cloned as detached mounts while still in the service's mount namespace
    // (a bind from a descriptor of another namespace is refused); attached in the new root.
    let mut trees = std::collections::HashMap::new();
    for (bind, fd) in plan
        .binds
        .iter()
        .filter_map(|b| {
            if let Source::Fd(n) = b.source {
                Some(n)
            } else {
                None
            }
        })
        .zip(&cwd_fds)
    {
        use rustix::mount::OpenTreeFlags as F;
        match rustix::mount::open_tree(
            fd,
            "",
            F::OPEN_TREE_CLONE | F::OPEN_TREE_CLOEXEC | F::AT_EMPTY_PATH | F::AT_RECURSIVE,
        ) {
            Ok(tree) => {
                trees.insert(bind, tree);
            }
            Err(e) => return fail(&format!("clone the user's tree: {e}")),
        }
    }
    drop(cwd_fds);
    let flags = UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    if let Err(e) = sys::unshare(flags) {
        return fail(&format!("unshare: {e}"));
    }
    // The init reports how the CLI ended through this pipe (pid 1 cannot die of a signal it
    // sends itself).
    let (status_read, status_write) = match rustix::pipe::pipe() {
        Ok(pair) => pair,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    let me = rustix::process::getpid();
    match sys::fork() {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(None) => {
            drop(status_read);
            // (The parent lives in another pid namespace: `getppid` says 0 here, so a parent that
            // died before this line cannot be detected; the session's cgroup still holds us.)
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            let code = match init(&plan, &trees, status_write) {
                Ok(code) => code,
                Err(e) => fail(&e),
            };
            std::process::exit(code)
        }
        Ok(Some(child)) => {
            drop(status_write);
            drop(trees);
            let waited = rustix::process::waitpid(Some(child), WaitOptions::empty());
            let mut report = String::new();
            let _ = fs::File::from(status_read).read_to_string(&mut report);
            if let Some(signal) = report
                .trim()
                .strip_prefix("signal ")
                .and_then(|s| s.parse::<i32>().ok())
            {
                if let Some(signal) = Signal::from_named_raw(signal) {
                    let _ = rustix::process::kill_process(me, signal);
                }
                return 128 + signal;
            }
            if let Some(code) = report
                .trim()
                .strip_prefix("code ")
                .and_then(|s| s.parse::<i32>().ok())
            {
                return code;
            }
            match waited {
                Ok(Some((_, status))) => status.exit_status().unwrap_or(SETUP_FAILED),
                _ => SETUP_FAILED,
            }
        }
    }
}

/// Pid 1 of the sandbox.
fn init(
    plan: &Plan,
    trees: &std::collections::HashMap<i32, OwnedFd>,
    status: OwnedFd,
) -> Result<i32, String> {
    let host_net = match &plan.relay {
        Some(relay) if matches!(relay.upstream, Upstream::HostTcp(_)) => {
            Some(fs::File::open("/proc/self/ns/net").map_err(|e| format!("host network namespace: {e}"))?)
        }
        _ => None,
    };
    sys::unshare(UnshareFlags::NEWNET).map_err(|e| format!("network namespace: {e}"))?;
    sys::loopback_up().map_err(|e| format!("loopback: {e}"))?;
    rustix::system::sethostname(b"sandbox").map_err(|e| format!("hostname: {e}"))?;
    build_root(plan, trees)?;
    let listener = match &plan.relay {
        Some(relay) => Some(
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, relay.port)))
                .map_err(|e| format!("relay port {}: {e}", relay.port))?,
        ),
        None => None,
    };
    let egress_listener = match &plan.egress {
        Some(egress) => Some(
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, egress.port)))
                .map_err(|e| format!("egress proxy port {}: {e}", egress.port))?,
        ),
        None => None,
    };
    let cli = match sys::fork().map_err(|e| format!("fork: {e}"))? {
        None => {
            drop(listener);
            drop(egress_listener);
            drop(host_net);
            drop(status);
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            let e = run_cli(plan);
            std::process::exit(fail(&e))
        }
        Some(pid) => pid,
    };
    if let (Some(listener), Some(relay)) = (listener, &plan.relay) {
        let upstream = match &relay.upstream {
            Upstream::Unix(_) => Upstream::Unix(Path::new(RELAY_DIR).join(RELAY_SOCKET)),
            other => other.clone(),
        };
        std::thread::spawn(move || forward(listener, upstream, host_net));
    }
    if let Some(listener) = egress_listener {
        let upstream = Upstream::Unix(Path::new(RELAY_DIR).join(EGRESS_SOCKET));
        std::thread::spawn(move || forward(listener, upstream, None));
    }
    let mut status = fs::File::from(status);
    loop {
        match rustix::process::waitpid(None, WaitOptions::empty()) {
            Ok(Some((pid, exit))) if pid == cli => {
                let report = if let Some(signal) = exit.terminating_signal() {
                    format!("signal {signal}")
                } else {
                    format!("code {}", exit.exit_status().unwrap_or(SETUP_FAILED))
                };
                let _ = status.write_all(report.as_bytes());
                return Ok(exit.exit_status().unwrap_or(SETUP_FAILED));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mkdirs(path: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| format!("mkdir {}: {e}", path.display()))
}

fn mount_tmpfs(target: &Path, flags: MountFlags, options: &str) -> Result<(), String> {
    let options = std::ffi::CString::new(options).map_err(|e| e.to_string())?;
    rustix::mount::mount("tmpfs", target, "tmpfs", flags, options.as_c_str())
        .map_err(|e| format!("tmpfs on {}: {e}", target.display()))
}

fn bind(source: &Path, target: &Path, writable: bool, exec: bool, device: bool) -> Result<(), String> {
    let is_dir = fs::metadata(source)
        .map_err(|e| format!("bind source {}: {e}", source.display()))?
        .is_dir();
    if is_dir {
        mkdirs(target, 0o755)?;
    } else {
        if let Some(parent) = target.parent() {
            mkdirs(parent, 0o755)?;
        }
        if !target.exists() {
            fs::File::create(target).map_err(|e| format!("create {}: {e}", target.display()))?;
        }
    }
    rustix::mount::mount_bind_recursive(source, target)
        .map_err(|e| format!("bind {} -> {}: {e}", source.display(), target.display()))?;
    let mut flags = MountFlags::BIND | MountFlags::NOSUID;
    if !writable {
        flags |= MountFlags::RDONLY;
    }
    if !exec {
        flags |= MountFlags::NOEXEC;
    }
    // Device nodes open only where `/dev` binds them.
    if !device {
        flags |= MountFlags::NODEV;
    }
    rustix::mount::mount_remount(target, flags, "").map_err(|e| format!("remount {}: {e}", target.display()))
}

/// Attaches a detached directory tree (from `open_tree`) at `target`.
fn attach(tree: &OwnedFd, target: &Path, writable: bool) -> Result<(), String> {
    mkdirs(target, 0o755)?;
    rustix::mount::move_mount(
        tree,
        "",
        rustix::fs::CWD,
        target,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("attach {}: {e}", target.display()))?;
    let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
    if !writable {
        flags |= MountFlags::RDONLY;
    }
    rustix::mount::mount_remount(target, flags, "").map_err(|e| format!("remount {}: {e}", target.display()))
}

/// The new root: a tmpfs with only what the plan names, then `pivot_root` into it.
fn build_root(plan: &Plan, trees: &std::collections::HashMap<i32, OwnedFd>) -> Result<(), String> {
    rustix::mount::mount_change("/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)
        .map_err(|e| format!("private mounts: {e}"))?;
    let root = plan.staging.as_path();
    mount_tmpfs(root, MountFlags::NOSUID | MountFlags::NODEV, "mode=0755,size=16m")?;
    // /tmp first: binds below a host /tmp path (tests' directories) land on top of it.
    let tmp = inside(root, Path::new("/tmp"));
    mkdirs(&tmp, 0o755)?;
    mount_tmpfs(
        &tmp,
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!(
            "mode=0700,uid={},gid={},size={}m",
            plan.uid,
            plan.gid,
            plan.tmp_mb.max(1)
        ),
    )?;
    for Bind {
        source,
        target,
        writable,
        exec,
    } in &plan.binds
    {
        match source {
            Source::Path(path) => bind(path, &inside(root, target), *writable, *exec, false)?,
            Source::Fd(fd) => {
                let tree = trees
                    .get(fd)
                    .ok_or_else(|| format!("no tree for descriptor {fd}"))?;
                attach(tree, &inside(root, target), *writable)?;
            }
        }
    }
    for (link, target) in &plan.symlinks {
        let link = inside(root, link);
        if let Some(parent) = link.parent() {
            mkdirs(parent, 0o755)?;
        }
        std::os::unix::fs::symlink(target, &link).map_err(|e| format!("symlink {}: {e}", link.display()))?;
    }
    // A minimal /dev.
    let dev = inside(root, Path::new("/dev"));
    mkdirs(&dev, 0o755)?;
    mount_tmpfs(
        &dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0755,size=64k",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            bind(&host, &dev.join(name), true, false, true)?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).map_err(|e| format!("/dev/{link}: {e}"))?;
    }
    let shm = dev.join("shm");
    mkdirs(&shm, 0o755)?;
    mount_tmpfs(
        &shm,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=1777,size=64m",
    )?;
    // A fresh /proc: this pid namespace's processes only.
    let proc = inside(root, Path::new("/proc"));
    mkdirs(&proc, 0o555)?;
    rustix::mount::mount(
        "proc",
        &proc,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("proc: {e}"))?;
    // The relay's and the egress proxy's sockets, where only root (this init) can reach them.
    let sockets = [(&plan.relay, RELAY_SOCKET), (&plan.egress, EGRESS_SOCKET)];
    for (forwarding, name) in sockets {
        if let Some(forwarding) = forwarding
            && let Upstream::Unix(socket) = &forwarding.upstream
        {
            let dir = inside(root, Path::new(RELAY_DIR));
            mkdirs(&dir, 0o700)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{RELAY_DIR}: {e}"))?;
            bind(socket, &dir.join(name), true, false, false)?;
        }
    }
    rustix::process::chdir(root).map_err(|e| format!("chdir root: {e}"))?;
    rustix::process::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(|e| format!("detach old root: {e}"))?;
    rustix::process::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    rustix::mount::mount_remount(
        "/",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(|e| format!("read-only root: {e}"))?;
    Ok(())
}

/// The CLI's process: becomes the user, confines itself, execs. Returns only on failure.
fn run_cli(plan: &Plan) -> String {
    let step = || -> Result<(), String> {
        sys::drop_bounding_set().map_err(|e| format!("bounding set: {e}"))?;
        rustix::thread::set_thread_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        let gid = rustix::process::Gid::from_raw(plan.gid);
        let uid = rustix::process::Uid::from_raw(plan.uid);
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: rustix::thread::CapabilitySet::empty(),
                permitted: rustix::thread::CapabilitySet::empty(),
                inheritable: rustix::thread::CapabilitySet::empty(),
            },
        )
        .map_err(|e| format!("capabilities: {e}"))?;
        if rustix::thread::set_thread_res_uid(
            rustix::process::Uid::ROOT,
            rustix::process::Uid::ROOT,
            rustix::process::Uid::ROOT,
        )
        .is_ok()
        {
            return Err("root could be regained".into());
        }
        rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
        rustix::process::chdir(&plan.cwd).map_err(|e| format!("chdir {}: {e}", plan.cwd.display()))?;
        if plan.landlock {
            landlock(plan)?;
        }
        if plan.seccomp {
            seccomp::install()?;
        }
        Ok(())
    };
    if let Err(e) = step() {
        return e;
    }
    let e = sys::execve(&plan.program, &plan.args, &plan.env);
    format!("exec {}: {e}", plan.program.display())
}

/// Landlock, as a second wall inside the namespace's view: read+execute `/usr` and the CLI, read
/// `/etc`, `/proc` and `/dev`, everything on the user's trees, `/tmp` and the harmless devices;
/// TCP connect only to the relay port (and the egress proxy's, where there is one), no TCP bind;
/// no abstract unix sockets or signals beyond the sandbox.
fn landlock(plan: &Plan) -> Result<(), String> {
    let abi = LANDLOCK_ABI;
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let file = AccessFs::from_file(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(err)?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
        .map_err(err)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err)?
        .create()
        .map_err(err)?;
    let mut rule = |path: &Path, access: landlock::BitFlags<AccessFs>| -> Result<(), String> {
        let Ok(meta) = fs::metadata(path) else {
            return Ok(());
        };
        let access = if meta.is_dir() { access } else { access & file };
        let fd = PathFd::new(path).map_err(|e| format!("landlock {}: {e}", path.display()))?;
        ruleset
            .as_mut()
            .add_rule(PathBeneath::new(fd, access))
            .map(|_| ())
            .map_err(|e| format!("landlock {}: {e}", path.display()))
    };
    for bind in &plan.binds {
        let access = match (bind.writable, bind.exec) {
            (true, _) => all,
            (false, true) => read | AccessFs::Execute,
            (false, false) => read,
        };
        rule(&bind.target, access)?;
    }
    rule(Path::new("/tmp"), all)?;
    rule(Path::new("/dev/shm"), all)?;
    rule(Path::new("/proc"), read)?;
    rule(Path::new("/dev"), read)?;
    for name in ["null", "zero", "full", "tty"] {
        rule(&Path::new("/dev").join(name), file)?;
    }
    for forwarding in [&plan.relay, &plan.egress].into_iter().flatten() {
        ruleset
            .as_mut()
            .add_rule(NetPort::new(forwarding.port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!("landlock not fully enforced: {:?}", status.ruleset));
    }
    Ok(())
}

/// Accepts connections on the in-sandbox relay port and forwards each to the upstream.
fn forward(listener: TcpListener, upstream: Upstream, host_net: Option<fs::File>) {
    let host_net = host_net.map(std::sync::Arc::new);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let upstream = upstream.clone();
        let host_net = host_net.clone();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            match &upstream {
                Upstream::Unix(path) => {
                    if let Ok(up) = UnixStream::connect(path) {
                        pump(conn, up);
                    }
                }
                Upstream::HostTcp(addr) => {
                    // This thread alone moves into the service's network namespace to connect;
                    // the socket stays there, the thread exits when the connection ends.
                    let Some(net) = host_net else { return };
                    if rustix::thread::move_into_link_name_space(
                        net.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .is_err()
                    {
                        return;
                    }
                    if let Ok(up) = TcpStream::connect(addr) {
                        let _ = up.set_nodelay(true);
                        pump(conn, up);
                    }
                }
            }
        });
    }
}

trait Duplex: Read + Write + Send + 'static {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Duplex>>;
    fn shutdown_write(&self);
}

impl Duplex for TcpStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Duplex for UnixStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

fn pump<U: Duplex>(client: TcpStream, upstream: U) {
    let (Ok(mut client_read), Ok(mut upstream_read)) = (client.try_clone(), upstream.try_clone_box()) else {
        return;
    };
    let mut upstream_write = upstream;
    let back = std::thread::spawn(move || {
        let mut client = client;
        let _ = std::io::copy(&mut upstream_read, &mut client);
        client.shutdown_write();
    });
    let _ = std::io::copy(&mut client_read, &mut upstream_write);
    upstream_write.shutdown_write();
    let _ = back.join();
}

/// `__sandbox probe`: tries what the strict profile needs and prints what is missing, one per
/// line (nothing: all there).
fn probe() -> i32 {
    let mut missing = Vec::new();
    let euid = rustix::process::geteuid();
    use rustix::thread::CapabilitySet as C;
    let caps = rustix::thread::capabilities(None).map_or(C::empty(), |c| c.effective);
    if !euid.is_root() || !caps.contains(C::SYS_ADMIN | C::SETUID | C::SETGID | C::SETPCAP) {
        missing.push("root (CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID, CAP_SETPCAP)".to_string());
    }
    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWNET;
    match sys::unshare(flags) {
        Err(e) => missing.push(format!("mount, pid, ipc, uts and network namespaces ({e})")),
        Ok(()) => {
            let mounted =
                rustix::mount::mount_change("/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)
                    .and_then(|()| {
                        rustix::mount::mount("tmpfs", "/tmp", "tmpfs", MountFlags::empty(), c"size=1m")
                    });
            if let Err(e) = mounted {
                missing.push(format!("mounts in a new mount namespace ({e})"));
            }
            if let Err(e) = sys::loopback_up() {
                missing.push(format!("loopback in a new network namespace ({e})"));
            }
        }
    }
    let abi = sys::landlock_abi();
    if abi < LANDLOCK_ABI as i32 {
        missing.push(format!(
            "Landlock ABI {} (the kernel offers {abi})",
            LANDLOCK_ABI as i32
        ));
    }
    if !fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp:")) {
        missing.push("seccomp".to_string());
    } else if let Err(e) = seccomp::deny_filter() {
        missing.push(e);
    }
    for line in &missing {
        println!("{line}");
    }
    0
}
