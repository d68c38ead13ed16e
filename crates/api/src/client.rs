//! The blocking socket client: sends one request, feeds progress events to a
//! callback, returns the final result.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};
use crate::protocol::{Event, Progress, Request, Upload, UPLOAD_FRAME};

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
    on_progress: impl FnMut(&Progress),
    on_data: impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<T, ApiError> {
    call_uploading(socket, req, |_| Ok(()), on_progress, on_data)
}

/// Like [`call_streaming`], for a request that takes an upload
/// ([`Request::takes_upload`]): after the request line, `upload` writes
/// the bytes through an [`UploadWriter`] (framed as it goes), then the
/// answer is read. When the daemon refuses early it closes the connection:
/// the upload stops with an error and its answer says why.
pub fn call_uploading<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    upload: impl FnOnce(&mut UploadWriter<&mut UnixStream>) -> std::io::Result<()>,
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
    let mut sent = stream.write_all(line.as_bytes());
    let mut local: Option<std::io::Error> = None;
    if sent.is_ok() && req.takes_upload() {
        let mut writer = UploadWriter::new(&mut stream);
        match upload(&mut writer).and_then(|()| writer.finish()) {
            Ok(()) => {}
            // The daemon closed its end: its answer says why.
            Err(e) if is_closed(&e) => sent = Err(e),
            // Reading what to upload failed: the daemon sees no `end`
            // and keeps nothing; say what failed here.
            Err(e) => local = Some(e),
        }
    }
    if let Some(e) = local {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("reading what to copy: {e}"),
        ));
    }
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

/// The daemon went away while we wrote.
fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

/// Frames what is written into [`Upload::Data`] lines of at most
/// [`UPLOAD_FRAME`] bytes; [`UploadWriter::finish`] sends the rest and
/// [`Upload::End`].
pub struct UploadWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    sent: u64,
}

impl<W: Write> UploadWriter<W> {
    pub fn new(out: W) -> Self {
        UploadWriter {
            out,
            buf: Vec::with_capacity(UPLOAD_FRAME),
            sent: 0,
        }
    }

    /// Bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.sent + self.buf.len() as u64
    }

    fn frame(&mut self) -> std::io::Result<()> {
        use base64::Engine;
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = base64::engine::general_purpose::STANDARD.encode(&self.buf);
        let mut line =
            serde_json::to_string(&Upload::Data(chunk)).map_err(std::io::Error::other)?;
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.sent += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Sends what is buffered, then the end of the upload.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.frame()?;
        let mut line = serde_json::to_string(&Upload::End).map_err(std::io::Error::other)?;
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Write for UploadWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(UPLOAD_FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == UPLOAD_FRAME {
            self.frame()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_framed_in_order_and_end() {
        use base64::Engine;
        let mut out = Vec::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = UploadWriter::new(&mut out);
        w.write_all(&data).unwrap();
        assert_eq!(w.bytes(), data.len() as u64);
        w.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let frames: Vec<Upload> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(frames.last(), Some(&Upload::End));
        let mut back = Vec::new();
        for f in &frames[..frames.len() - 1] {
            let Upload::Data(b) = f else { panic!("{f:?}") };
            let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
            assert!(bytes.len() <= UPLOAD_FRAME);
            back.extend(bytes);
        }
        assert_eq!(back, data);
        assert_eq!(frames.len(), 5, "4 frames of data (3 full), then end");
    }
}
