//! Test support: the real server on a random port, the real CLI, and the model stand-in (the only
//! fake in the suite); the host's processes as `/proc` shows them; PostgreSQL databases and servers of
//! the test's own.

pub mod agent;
pub mod model;
pub mod pg;
pub mod procs;
pub mod server;

pub use server::{Storage, TestServer, expect_json};
