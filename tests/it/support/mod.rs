//! Test support: the real server on a random port, and (later) the model stand-in.

pub mod server;

pub use server::{TestServer, expect_json};
