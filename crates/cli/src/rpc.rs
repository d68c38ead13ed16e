//! Calls the daemon, showing progress on a terminal.

use std::path::Path;

use banger_api::{client, Request};
use serde::de::DeserializeOwned;

use crate::progress::ProgressLine;

/// Sends `req`; progress events drive a spinner on a terminal.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> anyhow::Result<T> {
    let mut line = ProgressLine::new();
    let result = client::call(socket, req, |p| line.update(p));
    line.finish();
    Ok(result?)
}
