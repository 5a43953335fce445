//! The seccomp filter every sandboxed CLI runs under: no raw or datagram sockets, no socket family
//! but unix and IP, no io_uring (it creates sockets without `socket()`), no tracing or reading other
//! processes' memory, nothing that changes mounts, namespaces, keys, BPF, perf, userfaultfd,
//! kexec or modules, no `open_by_handle_at`, no `TIOCSTI` or `TIOCLINUX`; `clone3` answers `ENOSYS` (its flags
//! sit in a struct seccomp cannot read) so libc falls back to `clone`, whose namespace flags are
//! refused.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// System calls refused outright (`EPERM`).
pub const DENIED: &[(&str, i64)] = &[
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("bpf", libc::SYS_bpf),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
];

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("valid condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("valid rule")
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e:?}"))
}

/// The main filter (matches answer `EPERM`).
pub fn deny_filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in DENIED {
        rules.insert(*nr, Vec::new());
    }
    let (unix, inet, inet6) = (libc::AF_UNIX as u64, libc::AF_INET as u64, libc::AF_INET6 as u64);
    // socket(domain, type, protocol): only unix, and IP stream sockets.
    let mut socket_rules = vec![rule(vec![
        cond(0, SeccompCmpOp::Ne, unix),
        cond(0, SeccompCmpOp::Ne, inet),
        cond(0, SeccompCmpOp::Ne, inet6),
    ])];
    for family in [inet, inet6] {
        for kind in [
            libc::SOCK_DGRAM,
            libc::SOCK_RAW,
            libc::SOCK_RDM,
            libc::SOCK_SEQPACKET,
            10, // SOCK_PACKET
        ] {
            socket_rules.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, family),
                cond(1, SeccompCmpOp::MaskedEq(0xf), kind as u64),
            ]));
        }
    }
    rules.insert(libc::SYS_socket, socket_rules);
    rules.insert(
        libc::SYS_socketpair,
        vec![rule(vec![cond(0, SeccompCmpOp::Ne, unix)])],
    );
    // clone(flags, ...): no new namespaces.
    rules.insert(
        libc::SYS_clone,
        NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                rule(vec![
                    SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag)
                        .expect("valid condition"),
                ])
            })
            .collect(),
    );
    // ioctl(fd, TIOCSTI | TIOCLINUX): no typing into a terminal, no pasting a console's
    // selection into it (compared on the low 32 bits: the kernel reads `cmd` as an unsigned int).
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::TIOCSTI)]),
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::TIOCLINUX)]),
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp: {e}"))
}

/// `clone3` answers `ENOSYS`.
pub fn clone3_filter() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp: {e}"))
}

/// Installs both filters on this thread (needs `no_new_privs`, set by Landlock or the caller).
pub fn install() -> Result<(), String> {
    let deny = deny_filter()?;
    let clone3 = clone3_filter()?;
    seccompiler::apply_filter(&deny).map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter(&clone3).map_err(|e| format!("seccomp: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_deny_what_the_profile_promises() {
        assert!(!deny_filter().unwrap().is_empty());
        assert!(!clone3_filter().unwrap().is_empty());
        for name in [
            "io_uring_setup",
            "ptrace",
            "process_vm_readv",
            "mount",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "open_by_handle_at",
        ] {
            assert!(DENIED.iter().any(|(n, _)| *n == name), "{name} is denied");
        }
    }
}
