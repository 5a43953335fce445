//! The only code that spawns and talks to the Claude Code CLI. It knows the CLI, nothing of
//! sessions' lifecycles, pools or HTTP: finding or installing it (`cli`), what it is started with
//! (`command`), the spawn seam (`launch`), a cgroup per session (`cgroup`), one owned process
//! (`process`), the stream-json protocol (`protocol`), the permission policy (`policy`), turning
//! a turn's messages into events (`tracker`), and the `/proc` fallback where no cgroup exists
//! (`tree`).

pub mod cgroup;
pub mod cli;
pub mod command;
pub mod launch;
pub mod policy;
pub mod process;
pub mod protocol;
pub mod sandbox;
pub mod tracker;
pub mod tree;

pub use command::{Inherited, ModelAccess, SpawnSpec};
pub use launch::{DirectLauncher, Identity, Launcher};
pub use process::{AgentProcess, ExitInfo, Output};
