//! Handing a user's trees to the user's own uid (the strict isolation profile): a tree is walked
//! by descriptor, never by path, and links are changed themselves, never followed.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::process::{Gid, Uid};

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Whether `dir` is owned by `uid`.
pub fn owned_by(dir: impl AsFd, uid: u32) -> std::io::Result<bool> {
    Ok(rustix::fs::fstat(dir)?.st_uid == uid)
}

/// Makes `dir` itself owned by `uid:gid` with mode 0700.
pub fn own_dir(dir: impl AsFd, uid: u32, gid: u32) -> std::io::Result<()> {
    let dir = dir.as_fd();
    let stat = rustix::fs::fstat(dir)?;
    if stat.st_uid != uid || stat.st_gid != gid {
        rustix::fs::fchown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    if stat.st_mode & 0o7777 != 0o700 {
        rustix::fs::fchmod(dir, Mode::from_raw_mode(0o700))?;
    }
    Ok(())
}

/// Makes everything in the tree below `dir` (and `dir`, 0700) owned by `uid:gid`; entries are
/// changed without following links, directories entered by descriptor with `O_NOFOLLOW`.
pub fn own_tree(dir: OwnedFd, uid: u32, gid: u32) -> std::io::Result<()> {
    own_dir(&dir, uid, gid)?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let entries = Dir::read_from(&dir)?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if stat.st_uid != uid.as_raw() || stat.st_gid != gid.as_raw() {
                rustix::fs::chownat(&dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                match rustix::fs::openat(&dir, name, dir_flags(), Mode::empty()) {
                    Ok(child) => stack.push(child),
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_owned_without_following_its_links() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "x").unwrap();
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("a")).unwrap();
        std::fs::write(tree.path().join("a/f"), "y").unwrap();
        std::os::unix::fs::symlink(&victim, tree.path().join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.path().join("dirlink")).unwrap();
        let fd = rustix::fs::open(tree.path(), dir_flags(), Mode::empty()).unwrap();
        own_tree(fd, 4242, 4343).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(meta(&tree.path().join("a/f")).uid(), 4242);
        assert_eq!(meta(&tree.path().join("a/link")).uid(), 4242);
        assert_eq!(meta(tree.path()).mode() & 0o777, 0o700);
        assert_eq!(meta(&victim).uid(), 0, "the link's target is not changed");
        assert_eq!(meta(outside.path()).uid(), 0);
    }
}
