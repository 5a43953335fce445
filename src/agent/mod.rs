//! The only code that spawns and talks to the Claude Code CLI: finding or installing it (`cli`),
//! the stream-json protocol (`protocol`), one owned process per live session (`process`), turning
//! a turn's messages into events (`turn`), and the process tree under the service (`tree`).

pub mod cli;
pub mod process;
pub mod protocol;
pub mod tree;
pub mod turn;

pub use process::{AgentControl, AgentError, AgentEvent, AgentProcess, ExitInfo, SpawnSpec};
