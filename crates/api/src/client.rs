//! The blocking socket client: sends one request, feeds progress events to a
//! callback, returns the final result.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};
use crate::protocol::{Event, Progress, Request};

/// Sends `req` to the daemon at `socket` and waits for its answer.
pub fn call<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    on_progress: impl FnMut(&Progress),
) -> Result<T, ApiError> {
    call_streaming(socket, req, on_progress, |_| {
        Err(ApiError::internal(
            "the daemon streamed data to a request that expects none",
        ))
    })
}

/// Like [`call`], for answers that come in chunks (a patch): each chunk,
/// decoded, goes to `on_data` as it arrives, so nothing holds it whole.
pub fn call_streaming<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    mut on_progress: impl FnMut(&Progress),
    mut on_data: impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<T, ApiError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        ApiError::new(
            ErrorCode::HostMissing,
            format!(
                "cannot reach the banger daemon at {}: {e}; start it with `banger daemon` or set BANGER_SOCKET",
                socket.display()
            ),
        )
    })?;
    let mut line = serde_json::to_string(req).map_err(|e| ApiError::internal(e.to_string()))?;
    line.push('\n');
    // When sending fails, the answer is still read: a daemon that refuses
    // a connection (busy) answers and closes it at once, maybe before the
    // request arrived.
    let sent = stream.write_all(line.as_bytes());
    if sent.is_err() {
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    }
    let unanswered = |read: Option<std::io::Error>| match (&sent, read) {
        (Err(e), _) => ApiError::internal(format!("writing to the daemon: {e}")),
        (Ok(()), Some(e)) => ApiError::internal(format!("reading from the daemon: {e}")),
        (Ok(()), None) => {
            ApiError::internal("the daemon closed the connection without an answer; see its log")
        }
    };
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| unanswered(Some(e)))?;
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| ApiError::internal(format!("bad answer from the daemon: {e}")))?;
        match event {
            Event::Progress(p) => on_progress(&p),
            Event::Data(chunk) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(chunk)
                    .map_err(|e| ApiError::internal(format!("bad data from the daemon: {e}")))?;
                on_data(&bytes)?;
            }
            Event::Ok(v) => {
                return serde_json::from_value(v).map_err(|e| {
                    ApiError::internal(format!("unexpected answer from the daemon: {e}"))
                })
            }
            Event::Error(e) => return Err(e),
        }
    }
    Err(unanswered(None))
}
