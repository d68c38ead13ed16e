//! Calls the daemon, showing progress on a terminal.

use std::path::Path;

use banger_api::{client, Request};
use serde::de::DeserializeOwned;

use crate::progress::ProgressLine;

/// Sends `req`; progress drives a spinner on a terminal, and each chunk
/// of a streamed answer goes to `on_data` as it arrives.
pub fn call_streaming<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    mut on_data: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<T> {
    let mut line = ProgressLine::new();
    let mut local: Option<std::io::Error> = None;
    let result = client::call_streaming(
        socket,
        req,
        |p| line.update(p),
        |bytes| {
            on_data(bytes).map_err(|e| {
                let msg = e.to_string();
                local = Some(e);
                banger_api::ApiError::internal(msg)
            })
        },
    );
    line.finish();
    match (result, local) {
        (_, Some(e)) => Err(e.into()),
        (r, None) => Ok(r?),
    }
}

/// Sends `req`; progress events drive a spinner on a terminal.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> anyhow::Result<T> {
    let mut line = ProgressLine::new();
    let result = client::call(socket, req, |p| line.update(p));
    line.finish();
    Ok(result?)
}
