//! The few system calls of the sandbox that have no safe wrapper: adopting inherited descriptors,
//! `unshare`, `fork`, `execve`, bringing up the loopback interface, emptying the capability
//! bounding set and asking for the Landlock ABI. Each `unsafe` block says why it holds; nothing
//! else in the sandbox is unsafe (tests/it/layering.rs lists this file).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::process::Pid;

/// Takes ownership of descriptor `fd`, inherited from the service.
pub fn adopt_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 3
        || rustix::io::fcntl_getfd(
            // SAFETY: only probes whether `fd` is open; the borrow ends with the call.
            unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) },
        )
        .is_err()
    {
        return Err(io::Error::other(format!("descriptor {fd} is not open")));
    }
    // SAFETY: the service passed `fd` to this process for it alone (the launcher is a fresh
    // exec; nothing else in it knows the number), and it is open (checked above).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `unshare(flags)` for namespaces (never `CLONE_FILES`).
pub fn unshare(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    debug_assert!(!flags.contains(rustix::thread::UnshareFlags::FILES));
    // SAFETY: the only hazard of `unshare` is `CLONE_FILES` (descriptors seen by other threads
    // disappearing); it is never passed.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// `fork()`: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Must be called while the process has a single thread (the launcher forks before it starts
/// any), so the child may allocate and take locks.
pub fn fork() -> io::Result<Option<Pid>> {
    // SAFETY: callers fork only while this process is single-threaded (the launcher's own main
    // thread, before the forwarder threads exist), so no lock can be held by a thread that does
    // not exist in the child.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Pid::from_raw(pid)),
    }
}

/// Replaces this process with `program`; returns only on failure.
pub fn execve(program: &Path, args: &[String], env: &[(String, String)]) -> io::Error {
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|_| io::Error::other("NUL in an argument"));
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let program = cstring(program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let envp = env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok((program, argv, envp))
    };
    let (program, argv, envp) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: every pointer points into a NUL-terminated string owned by `program`, `argv` or
    // `envp`, alive until `execve` returns (it only returns on failure); both arrays end in NULL.
    unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Sets `IFF_UP` on `lo` in this network namespace.
pub fn loopback_up() -> io::Result<()> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only the `ifreq` passed, which lives on
    // this stack frame for both calls; the descriptor is a socket owned by this function.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Empties the capability bounding set (needs `CAP_SETPCAP`, i.e. before dropping root).
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The Landlock ABI version the kernel offers (0: none).
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute and size 0, the call only returns the version number.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 { 0 } else { rc as i32 }
}
