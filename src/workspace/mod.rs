//! User workspaces: validating user ids and subdirectories, and resolving `base_dir/<user>/<subdir>`
//! on disk component by component with `O_NOFOLLOW`, so that no symlink (even one an agent planted
//! inside its own directory) can lead a session outside its user's directory. It also creates the
//! service's private folders under `data_dir`. Every directory it creates is mode 0700 whatever the
//! umask. It must not know about sessions or HTTP.

mod names;
pub mod owner;

use std::fs::Permissions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

pub use names::{check_subdir, check_user_id, normalize_subdir};

/// Folders under `data_dir` that other layers fill and nobody else may read: each user's CLI
/// state (`sessions::agents_root`) and the installed CLI (`agent::cli::install_dir`).
const PRIVATE_DATA_DIRS: &[&str] = &["agents", "cli"];

/// Why a workspace could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The user id breaks a naming rule.
    #[error("invalid user_id: {0}")]
    InvalidUserId(String),
    /// The subdirectory breaks a naming rule.
    #[error("invalid subdir: {0}")]
    InvalidSubdir(String),
    /// A path component on disk is a symbolic link.
    #[error("path component {0:?} is a symbolic link; workspaces never follow links")]
    Symlink(String),
    /// A path component on disk exists but is not a directory.
    #[error("path component {0:?} exists and is not a directory")]
    NotADirectory(String),
    /// The directory does not exist and `user.auto_create_dir` is off.
    #[error("directory {0:?} does not exist and user.auto_create_dir is off")]
    Missing(String),
    /// The file system failed.
    #[error("workspace I/O error at {path:?}: {source}")]
    Io {
        /// Where.
        path: String,
        /// What failed.
        source: io::Error,
    },
}

/// The root under which every user's workspace lives.
#[derive(Debug, Clone)]
pub struct Workspaces {
    base: PathBuf,
    auto_create: bool,
}

impl Workspaces {
    /// Creates (if needed) `data_dir` and its private folders, then opens (creating if needed) the
    /// base directory; both paths are trusted configuration. Directories that already exist keep
    /// their mode.
    pub fn new(data_dir: &Path, base_dir: &Path, auto_create: bool) -> io::Result<Self> {
        for dir in PRIVATE_DATA_DIRS {
            create_private_dir(&data_dir.join(dir))?;
        }
        create_private_dir(base_dir)?;
        Ok(Workspaces {
            base: std::fs::canonicalize(base_dir)?,
            auto_create,
        })
    }

    /// The canonical base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Checks the names, then finds or creates the workspace; returns its path.
    /// A rejection leaves nothing on disk.
    pub fn resolve(&self, user_id: &str, subdir: Option<&str>) -> Result<PathBuf, WorkspaceError> {
        let components = Self::components(user_id, subdir)?;
        let (mut dir, found) = self.walk(&components)?;
        let missing = &components[found..];
        if !missing.is_empty() && !self.auto_create {
            return Err(WorkspaceError::Missing(components.join("/")));
        }
        for component in missing {
            let created = match rustix::fs::mkdirat(&dir, *component, Mode::from_raw_mode(0o700)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(errno) => return Err(self.io_error(&components, errno)),
            };
            dir = self.open_component(&dir, component, &components)?;
            if created {
                // mkdirat's mode passes through the umask; set it on the opened directory.
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700))
                    .map_err(|errno| self.io_error(&components, errno))?;
            }
        }
        Ok(components.iter().fold(self.base.clone(), |path, c| path.join(c)))
    }

    /// Checks names and what already exists on disk, creating nothing; what `resolve` would refuse.
    pub fn check(&self, user_id: &str, subdir: Option<&str>) -> Result<(), WorkspaceError> {
        let components = Self::components(user_id, subdir)?;
        let (_, found) = self.walk(&components)?;
        if found < components.len() && !self.auto_create {
            return Err(WorkspaceError::Missing(components.join("/")));
        }
        Ok(())
    }

    /// The path a checked workspace has (no file system access).
    pub fn path_of(&self, user_id: &str, subdir: Option<&str>) -> PathBuf {
        let mut path = self.base.join(user_id);
        if let Some(subdir) = subdir {
            path.extend(subdir.split('/'));
        }
        path
    }

    /// Opens an existing workspace directory without following links, for a child's `fchdir`.
    pub fn open(&self, user_id: &str, subdir: Option<&str>) -> Result<OwnedFd, WorkspaceError> {
        let components = Self::components(user_id, subdir)?;
        let (dir, found) = self.walk(&components)?;
        if found < components.len() {
            return Err(WorkspaceError::Missing(components.join("/")));
        }
        Ok(dir)
    }

    /// Hands a user's workspace to `uid:gid` (strict isolation): the whole tree once, when its
    /// root is not the uid's yet; then each directory from the root down to `subdir` (created by
    /// the service since). Returns the root's descriptor (for a sandbox to bind).
    pub fn own(
        &self,
        user_id: &str,
        subdir: Option<&str>,
        uid: u32,
        gid: u32,
    ) -> Result<OwnedFd, WorkspaceError> {
        let components = Self::components(user_id, subdir)?;
        let (base, found) = self.walk(&[])?;
        debug_assert_eq!(found, 0);
        let root = self.open_component(&base, components[0], &components[..1])?;
        let io = |e: io::Error| WorkspaceError::Io {
            path: self.base.join(user_id).display().to_string(),
            source: e,
        };
        if !owner::owned_by(&root, uid).map_err(io)? {
            let again = self.open_component(&base, components[0], &components[..1])?;
            owner::own_tree(again, uid, gid).map_err(io)?;
        }
        owner::own_dir(&root, uid, gid).map_err(io)?;
        let mut dir = self.open_component(&base, components[0], &components[..1])?;
        for (index, component) in components.iter().enumerate().skip(1) {
            dir = self.open_component(&dir, component, &components[..=index])?;
            owner::own_dir(&dir, uid, gid).map_err(io)?;
        }
        Ok(root)
    }

    fn components<'a>(user_id: &'a str, subdir: Option<&'a str>) -> Result<Vec<&'a str>, WorkspaceError> {
        check_user_id(user_id)?;
        let mut components = vec![user_id];
        if let Some(subdir) = subdir {
            components.extend(check_subdir(subdir)?);
        }
        Ok(components)
    }

    /// Opens the longest existing prefix; returns its descriptor and how many components exist.
    fn walk(&self, components: &[&str]) -> Result<(OwnedFd, usize), WorkspaceError> {
        let mut dir = rustix::fs::open(&self.base, dir_flags(), Mode::empty())
            .map_err(|errno| self.io_error(&[], errno))?;
        for (index, component) in components.iter().enumerate() {
            match rustix::fs::openat(&dir, *component, dir_flags(), Mode::empty()) {
                Ok(next) => dir = next,
                Err(Errno::NOENT) => return Ok((dir, index)),
                Err(errno) => {
                    return Err(self.component_error(&dir, component, &components[..=index], errno));
                }
            }
        }
        Ok((dir, components.len()))
    }

    fn open_component(
        &self,
        dir: &OwnedFd,
        component: &str,
        all: &[&str],
    ) -> Result<OwnedFd, WorkspaceError> {
        rustix::fs::openat(dir, component, dir_flags(), Mode::empty())
            .map_err(|errno| self.component_error(dir, component, all, errno))
    }

    fn component_error(&self, dir: &OwnedFd, component: &str, path: &[&str], errno: Errno) -> WorkspaceError {
        // With O_DIRECTORY, Linux reports a link as ENOTDIR rather than ELOOP; look without following.
        let is_link = || {
            rustix::fs::statat(dir, component, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink)
        };
        match errno {
            Errno::LOOP => WorkspaceError::Symlink(component.to_string()),
            Errno::NOTDIR if is_link() => WorkspaceError::Symlink(component.to_string()),
            Errno::NOTDIR => WorkspaceError::NotADirectory(component.to_string()),
            _ => self.io_error(path, errno),
        }
    }

    fn io_error(&self, path: &[&str], errno: Errno) -> WorkspaceError {
        WorkspaceError::Io {
            path: path
                .iter()
                .fold(self.base.clone(), |p, c| p.join(c))
                .display()
                .to_string(),
            source: errno.into(),
        }
    }
}

/// Creates `dir` and its missing ancestors with mode 0700, whatever the umask; leaves existing
/// directories as they are. The one way the service makes a private directory.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::metadata(d).is_err())
        .collect();
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(0o700))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}
