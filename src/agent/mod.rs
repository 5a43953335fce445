//! The only code that spawns and talks to the Claude Code CLI: finding or installing it, the
//! stream-json protocol, one owned process per live session, and the process tree under the service.

pub mod tree;
