//! Requests that carry an upload (`vm cp` into a VM): the client's frames
//! after the request line are read as the operation takes them (bounded:
//! a few frames wait, the client waits for the rest), decoded, and handed
//! over in order. An upload that stops before its `end` frame, a frame too
//! large or malformed, or a client silent for longer than the idle limit
//! ends it with an error, so nothing half-sent is kept.

use std::sync::Arc;
use std::time::Duration;

use banger_api::{ApiError, ErrorCode, Request, Upload, UPLOAD_FRAME};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::RequestReader;
use crate::opstate::Sink;
use crate::vm::copy::{CpIn, Frames};
use crate::vm::{Caller, VmService};

/// How many decoded frames wait for the operation.
const FRAMES_QUEUED: usize = 4;

/// The longest frame line: a full frame in base64 plus its JSON.
const MAX_FRAME_LINE: u64 = (UPLOAD_FRAME as u64).div_ceil(3) * 4 + 64;

/// Reads `reader`'s frames in a task of their own. The channel closes
/// after `end`; anything else that ends the upload is sent as an error.
pub fn read_frames(mut reader: RequestReader, idle: Duration) -> Frames {
    let (tx, rx) = tokio::sync::mpsc::channel(FRAMES_QUEUED);
    tokio::spawn(async move {
        loop {
            let frame = match tokio::time::timeout(idle, next_frame(&mut reader)).await {
                Ok(frame) => frame,
                Err(_) => Err(format!(
                    "the client sent nothing for {}s during the upload",
                    idle.as_secs()
                )),
            };
            let done = !matches!(frame, Ok(Some(_)));
            let item = match frame {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => return, // `end`: the channel closes
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() || done {
                return; // the operation ended, or the upload failed
            }
        }
    });
    rx
}

/// The next frame's bytes; `None` after `end`.
async fn next_frame(reader: &mut RequestReader) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_FRAME_LINE + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the upload: {e}"))?;
    if n == 0 {
        return Err("the client closed the connection before the end of the upload".into());
    }
    if line.pop() != Some(b'\n') {
        return Err(if n as u64 > MAX_FRAME_LINE {
            format!("an upload frame longer than {MAX_FRAME_LINE} bytes")
        } else {
            "the client closed the connection before the end of the upload".into()
        });
    }
    match serde_json::from_slice::<Upload>(&line) {
        Ok(Upload::End) => Ok(None),
        Ok(Upload::Data(b64)) => {
            let bytes = BASE64
                .decode(b64)
                .map_err(|e| format!("an upload frame is not base64: {e}"))?;
            if bytes.len() > UPLOAD_FRAME {
                return Err(format!("an upload frame over {UPLOAD_FRAME} bytes"));
            }
            Ok(Some(bytes))
        }
        Err(e) => Err(format!("a malformed upload frame: {e}")),
    }
}

/// Runs a request that takes an upload, `frames` its data.
pub async fn dispatch(
    svc: &Arc<VmService>,
    req: Request,
    caller: Caller,
    sink: Sink,
    frames: Frames,
) -> Result<Value, ApiError> {
    match req {
        Request::VmCpIn {
            name,
            dest,
            source_name,
            source_is_dir,
            contents,
        } => {
            let req = CpIn {
                vm: name,
                dest,
                source_name,
                source_is_dir,
                contents,
            };
            let (path, bytes) = svc.cp_in(caller, req, frames, Some(sink)).await?;
            Ok(json!({ "path": path, "bytes": bytes }))
        }
        other => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "{} takes no upload; is the CLI the same version as the daemon?",
                serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v["op"].as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A frame reader over a real socket pair, the client's end, and the
    /// server's write half (kept open while the test runs).
    fn pair(
        idle: Duration,
    ) -> (
        Frames,
        tokio::net::UnixStream,
        tokio::net::unix::OwnedWriteHalf,
    ) {
        let (client, server) = tokio::net::UnixStream::pair().expect("socket pair");
        let (read, write) = server.into_split();
        let reader = tokio::io::BufReader::new(read.take(u64::MAX));
        (read_frames(reader, idle), client, write)
    }

    fn frame(bytes: &[u8]) -> String {
        let mut l = serde_json::to_string(&Upload::Data(BASE64.encode(bytes))).expect("json");
        l.push('\n');
        l
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_end_closes_the_channel() {
        let (mut frames, mut client, _w) = pair(Duration::from_secs(5));
        let text = format!("{}{}\"end\"\n", frame(b"one"), frame(b"two"));
        client.write_all(text.as_bytes()).await.expect("write");
        assert_eq!(frames.recv().await, Some(Ok(b"one".to_vec())));
        assert_eq!(frames.recv().await, Some(Ok(b"two".to_vec())));
        assert_eq!(frames.recv().await, None, "end closes the upload");
    }

    #[tokio::test]
    async fn an_upload_cut_short_or_malformed_is_an_error() {
        let (mut frames, mut client, _w) = pair(Duration::from_secs(5));
        client
            .write_all(frame(b"one").as_bytes())
            .await
            .expect("write");
        drop(client);
        assert_eq!(frames.recv().await, Some(Ok(b"one".to_vec())));
        let e = frames
            .recv()
            .await
            .expect("an error")
            .expect_err("cut short");
        assert!(e.contains("before the end of the upload"), "{e}");

        let (mut frames, mut client, _w) = pair(Duration::from_secs(5));
        client
            .write_all(b"{\"data\":\"%%%\"}\n")
            .await
            .expect("write");
        let e = frames.recv().await.expect("an error").expect_err("bad");
        assert!(e.contains("not base64"), "{e}");

        let (mut frames, mut client, _w) = pair(Duration::from_secs(5));
        let big = vec![b'A'; MAX_FRAME_LINE as usize + 10];
        client.write_all(&big).await.expect("write");
        let e = frames
            .recv()
            .await
            .expect("an error")
            .expect_err("too long");
        assert!(e.contains("longer than"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_client_is_given_up_on() {
        let (mut frames, _client, _w) = pair(Duration::from_millis(200));
        let e = frames.recv().await.expect("an error").expect_err("idle");
        assert!(e.contains("sent nothing"), "{e}");
    }
}
