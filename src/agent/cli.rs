//! Finding the Claude Code CLI: `defaults.cli_path`, else `claude` on PATH, else the copy this
//! service installed under its data folder; when none exists and npm does, installing the pinned,
//! tested version there (once, under a file lock, so parallel tests and instances share one copy).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The npm package of the CLI.
pub const CLI_PACKAGE: &str = "@anthropic-ai/claude-code";
/// The CLI version this service is tested against (flags and messages change between releases).
pub const TESTED_CLI_VERSION: &str = "2.1.332";

/// Why no CLI could be found or installed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `defaults.cli_path` points to nothing executable.
    #[error("defaults.cli_path {0} is not an executable file")]
    ConfiguredMissing(PathBuf),
    /// Nothing was found and installing is off or impossible.
    #[error("no Claude Code CLI found ({0}); set defaults.cli_path or install {CLI_PACKAGE}")]
    NotFound(String),
    /// npm failed.
    #[error("installing {CLI_PACKAGE}@{TESTED_CLI_VERSION} with npm failed: {0}")]
    Install(String),
}

/// Where the service installs its own copy of the CLI.
pub fn install_dir(data_dir: &Path) -> PathBuf {
    // One folder per version: a service upgraded to a newer pin installs the newer CLI.
    data_dir.join("cli").join(TESTED_CLI_VERSION)
}

fn installed_binary(dir: &Path) -> PathBuf {
    dir.join("node_modules").join(".bin").join("claude")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// What looking for the CLI found, without installing anything.
#[derive(Debug)]
pub enum Lookup {
    /// A usable CLI.
    Found(PathBuf),
    /// None, but it may be installed with this npm.
    Installable {
        /// The npm that would install it.
        npm: PathBuf,
    },
    /// None, and it may not or cannot be installed.
    Missing(CliError),
}

/// Looks for the CLI: `configured`, else `claude` on PATH, else a copy installed in `install_dir`.
pub fn find(configured: Option<&Path>, install_dir: &Path, auto_install: bool) -> Lookup {
    if let Some(path) = configured {
        return if is_executable(path) {
            Lookup::Found(path.to_owned())
        } else {
            Lookup::Missing(CliError::ConfiguredMissing(path.to_owned()))
        };
    }
    if let Some(path) = on_path("claude") {
        return Lookup::Found(path);
    }
    let installed = installed_binary(install_dir);
    if is_executable(&installed) {
        return Lookup::Found(installed);
    }
    if !auto_install {
        return Lookup::Missing(CliError::NotFound(
            "auto-install is off (defaults.cli_auto_install)".into(),
        ));
    }
    match on_path("npm") {
        Some(npm) => Lookup::Installable { npm },
        None => Lookup::Missing(CliError::NotFound("npm is not on PATH to install it".into())),
    }
}

/// Finds the CLI, installing the pinned version into `install_dir` if allowed and needed.
/// Blocking: call from a blocking context.
pub fn find_or_install(
    configured: Option<&Path>,
    install_dir: &Path,
    auto_install: bool,
) -> Result<PathBuf, CliError> {
    match find(configured, install_dir, auto_install) {
        Lookup::Found(path) => Ok(path),
        Lookup::Installable { npm } => install(&npm, install_dir),
        Lookup::Missing(e) => Err(e),
    }
}

/// Installs the pinned CLI into `dir` (unless another process did while we waited for the lock)
/// and returns its path. Blocking: call from a blocking context.
pub fn install(npm: &Path, dir: &Path) -> Result<PathBuf, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::Install(e.to_string());
    // Private: the service creates `<data_dir>/cli` 0700 at startup; the version folder follows.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| failed(&e))?;
    let lock = File::create(dir.join(".install.lock")).map_err(|e| failed(&e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| failed(&e))?;
    if is_executable(&installed_binary(dir)) {
        return Ok(installed_binary(dir));
    }
    tracing::warn!(
        dir = %dir.display(),
        "no Claude Code CLI found: installing {CLI_PACKAGE}@{TESTED_CLI_VERSION} with npm (once)"
    );
    let output = Command::new(npm)
        .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
        .arg(dir)
        .arg(format!("{CLI_PACKAGE}@{TESTED_CLI_VERSION}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(&e))?;
    if !output.status.success() || !is_executable(&installed_binary(dir)) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(CliError::Install(
            tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        ));
    }
    tracing::info!(dir = %dir.display(), "installed {CLI_PACKAGE}@{TESTED_CLI_VERSION}");
    Ok(installed_binary(dir))
}

/// The CLI's version (`claude --version` prints e.g. `2.1.197 (Claude Code)`), if it answers.
pub fn version(cli: &Path) -> Option<String> {
    let mut child = Command::new(cli)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // A broken binary must not hang startup.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().ok()?.is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    out.split_whitespace().next().map(str::to_string)
}

/// Whether a CLI version string (`2.1.332`, maybe with a suffix) is at least `min`.
pub fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    found >= min
}

/// Logs which CLI is used, warns when it is not the tested version, and returns its version.
pub fn log_version(cli: &Path) -> Option<String> {
    let found = version(cli);
    match &found {
        Some(v) if v == TESTED_CLI_VERSION => {
            tracing::info!(cli.path = %cli.display(), cli.version = %v, "Claude Code CLI")
        }
        Some(v) => tracing::warn!(
            cli.path = %cli.display(), cli.version = %v, cli.tested = TESTED_CLI_VERSION,
            "Claude Code CLI version differs from the tested one; flags or messages may not match"
        ),
        None => tracing::warn!(cli.path = %cli.display(), "Claude Code CLI did not report a version"),
    }
    found
}
