//! A fake Firecracker for contract tests: its API description loaded from
//! Firecracker's own Swagger file, a server that checks every request
//! against it, and a stand-in `firecracker` executable.

#![allow(dead_code)] // each test file uses its own part

pub mod contract;
pub mod server;
pub mod yaml;
