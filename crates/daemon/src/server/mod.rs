//! The socket server: one JSON request per connection, answered with
//! progress events and one final result. Operations run in their own task,
//! so a client that goes away does not cancel them.
//!
//! The socket is open to a whole group, so the server bounds what one
//! client can hold: [`MAX_CONNECTIONS`] connections at once (more are
//! answered `busy` and closed), [`REQUEST_DEADLINE`] to send the request
//! line, [`MAX_REQUEST`] bytes for it, and [`WRITE_DEADLINE`] for a client
//! that stops reading its answer. Failed accepts (out of file descriptors)
//! back off instead of spinning, and are logged at most once a second.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::{ApiError, ErrorCode, Event, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::opstate::SINK_DEPTH;
use crate::vm::{Caller, VmService};

mod dispatch;
mod upload;
pub use dispatch::dispatch;

/// Longest request line accepted, its newline not counted. Requests are
/// small (the largest carries a path); this only bounds a hostile client.
pub const MAX_REQUEST: u64 = 1 << 20;

/// How long a client has, from being accepted, to send its whole request
/// line. Only the request: the answer of a long operation (a create, an
/// image build) may stream for minutes afterwards.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Connections served at once, including those waiting on an operation's
/// answer. Normal use holds a handful (a few creates plus list/show polls);
/// each connection is one file descriptor, and the daemon needs the rest
/// of its RLIMIT_NOFILE for VMs, disks and the database.
pub const MAX_CONNECTIONS: usize = 64;

/// How long one answer line may wait on a client that does not read it.
/// Past that the client is dropped; its operation carries on.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// First pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after failed accepts, and the shortest interval between
/// two log lines about them (or about refused connections).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the server allows each client. [`Limits::default`] is what the
/// daemon uses; tests shorten it through [`with_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_deadline: Duration,
    pub max_connections: usize,
    pub write_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_deadline: REQUEST_DEADLINE,
            max_connections: MAX_CONNECTIONS,
            write_deadline: WRITE_DEADLINE,
        }
    }
}

tokio::task_local! {
    static LIMITS: Limits;
}

/// Runs `fut` (typically `bangerd::run`) with `limits` in place of the
/// defaults for every [`serve`] it awaits. For tests: the daemon itself
/// always runs with [`Limits::default`].
pub async fn with_limits<F: Future>(limits: Limits, fut: F) -> F::Output {
    LIMITS.scope(limits, fut).await
}

/// Serves `listener` until `shutdown`, with [`Limits::default`] (or those
/// of an enclosing [`with_limits`]).
pub async fn serve(
    listener: UnixListener,
    svc: Arc<VmService>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = LIMITS.try_with(|l| *l).unwrap_or_default();
    serve_with(listener, svc, limits, shutdown).await
}

/// Serves `listener` until `shutdown`, with `limits`.
pub async fn serve_with(
    listener: UnixListener,
    svc: Arc<VmService>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    let mut refusals = Throttle::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let svc = svc.clone();
                        tokio::spawn(async move {
                            handle_connection(stream, svc, limits).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        let n = limits.max_connections;
                        refuse(stream, busy_error(n));
                        if let Some(count) = refusals.hit(Instant::now(), ACCEPT_BACKOFF_MAX) {
                            tracing::warn!(
                                "refused {count} connection(s): already serving {n}, the most allowed"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                let (delay, report) = backoff.failed(Instant::now());
                if let Some(count) = report {
                    tracing::warn!(
                        "accept on the socket failed {count} time(s) since the last report: {e}; \
                         retrying in {delay:?} (if it is `Too many open files`, raise the \
                         daemon's RLIMIT_NOFILE)"
                    );
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn busy_error(serving: usize) -> ApiError {
    ApiError::new(
        ErrorCode::Busy,
        format!("the daemon is serving {serving} connections, the most it allows; try again in a moment"),
    )
}

/// Answers `err` on a connection the server will not serve, and closes it.
/// Never waits: the line goes into the fresh socket's empty buffer or is
/// lost.
fn refuse(stream: UnixStream, err: ApiError) {
    use std::io::Write;
    if let Ok(stream) = stream.into_std() {
        // Non-blocking, so this cannot hold up the accept loop.
        let _ = (&stream).write(event_line(&Event::Error(err)).as_bytes());
    }
}

fn event_line(event: &Event) -> String {
    let mut text = serde_json::to_string(event).unwrap_or_default();
    text.push('\n');
    text
}

/// Counts events and says when one should be reported: the first, then at
/// most one per `interval`, with how many happened since the last report.
#[derive(Debug, Default)]
struct Throttle {
    last_report: Option<Instant>,
    unreported: u64,
}

impl Throttle {
    fn hit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= interval);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The pause after each failed accept: [`ACCEPT_BACKOFF_MIN`] doubling to
/// [`ACCEPT_BACKOFF_MAX`], back to the minimum once an accept succeeds.
/// Failures are reported at most once per [`ACCEPT_BACKOFF_MAX`], even when
/// accepts alternately fail and succeed.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The last pause; `None` after a success.
    delay: Option<Duration>,
    log: Throttle,
}

impl AcceptBackoff {
    fn succeeded(&mut self) {
        self.delay = None;
    }

    /// How long to pause after a failure at `now`, and, when it should be
    /// logged, how many failures the log line covers.
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let delay = match self.delay {
            None => ACCEPT_BACKOFF_MIN,
            Some(d) => d.saturating_mul(2).min(ACCEPT_BACKOFF_MAX),
        };
        self.delay = Some(delay);
        (delay, self.log.hit(now, ACCEPT_BACKOFF_MAX))
    }
}

/// Why no request came out of a connection.
#[derive(Debug)]
enum NoRequest {
    /// The client left without sending anything: nothing to answer.
    Closed,
    /// The client sent something unusable, or nothing in time.
    Refused(ApiError),
}

async fn handle_connection(stream: UnixStream, svc: Arc<VmService>, limits: Limits) {
    let Ok(caller) = stream.peer_cred().map(|c| Caller {
        uid: c.uid(),
        gid: c.gid(),
    }) else {
        tracing::warn!("a connection without peer credentials; dropped");
        return;
    };
    let uid = caller.uid;
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel(SINK_DEPTH);
    match read_request(read, limits.request_deadline).await {
        Ok((req, reader)) => {
            tracing::debug!(uid, ?req, "request");
            let sink = tx.clone();
            // An upload's frames are read as the operation takes them.
            let upload = req
                .takes_upload()
                .then(|| upload::read_frames(reader, limits.write_deadline));
            tokio::spawn(async move {
                let answer = match upload {
                    Some(frames) => upload::dispatch(&svc, req, caller, sink.clone(), frames).await,
                    None => dispatch(&svc, req, caller, sink.clone()).await,
                };
                let event = match answer {
                    Ok(v) => Event::Ok(v),
                    Err(e) => Event::Error(e),
                };
                let _ = sink.send(event).await;
            });
        }
        Err(NoRequest::Closed) => return,
        Err(NoRequest::Refused(e)) => {
            tracing::debug!(uid, "request refused: {e}");
            let _ = tx.send(Event::Error(e)).await;
        }
    }
    drop(tx);
    while let Some(event) = rx.recv().await {
        let text = event_line(&event);
        match tokio::time::timeout(limits.write_deadline, write.write_all(text.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break, // the client left; the operation carries on
            Err(_) => {
                tracing::info!(
                    uid,
                    "a client read nothing of its answer for {:?}; dropped (its operation carries on)",
                    limits.write_deadline
                );
                break;
            }
        }
    }
}

/// The connection's read side after the request line (an upload follows
/// some requests), buffered bytes kept.
type RequestReader = BufReader<tokio::io::Take<OwnedReadHalf>>;

/// Reads the request line: at most [`MAX_REQUEST`] bytes and a newline,
/// all within `deadline`. A client that half-closes after its request
/// without a newline is still served.
async fn read_request(
    read: OwnedReadHalf,
    deadline: Duration,
) -> Result<(Request, RequestReader), NoRequest> {
    let mut buf = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST + 1));
    match tokio::time::timeout(deadline, reader.read_until(b'\n', &mut buf)).await {
        Ok(Ok(_)) => {
            let req = parse_request(&buf)?;
            reader.get_mut().set_limit(u64::MAX);
            Ok((req, reader))
        }
        Ok(Err(e)) => {
            tracing::debug!("reading a request: {e}");
            Err(NoRequest::Closed)
        }
        Err(_) => Err(NoRequest::Refused(ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "no complete request line within {:?} of connecting (got {} bytes and no newline); \
                 send one JSON request followed by a newline right after connecting",
                deadline,
                buf.len()
            ),
        ))),
    }
}

/// Decodes one request line as read by [`read_request`] (newline included
/// when there was one).
fn parse_request(buf: &[u8]) -> Result<Request, NoRequest> {
    let line = match buf.strip_suffix(b"\n") {
        Some(line) => line,
        None if buf.is_empty() => return Err(NoRequest::Closed),
        None if buf.len() as u64 > MAX_REQUEST => {
            return Err(NoRequest::Refused(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "request line longer than {MAX_REQUEST} bytes (1 MiB); \
                     send one JSON request of at most that size followed by a newline"
                ),
            )))
        }
        None => buf,
    };
    let text = std::str::from_utf8(line).map_err(|e| {
        NoRequest::Refused(ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "request is not UTF-8 (invalid byte at offset {}); \
                 send one JSON request line in UTF-8; is the CLI the same version as the daemon?",
                e.valid_up_to()
            ),
        ))
    })?;
    serde_json::from_str::<Request>(text).map_err(|e| {
        NoRequest::Refused(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("malformed request: {e}; is the CLI the same version as the daemon?"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(buf: &[u8]) -> ApiError {
        match parse_request(buf) {
            Err(NoRequest::Refused(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn request_lines_decode_or_say_what_is_wrong() {
        assert!(matches!(
            parse_request(b"{\"op\":\"ping\"}\n"),
            Ok(Request::Ping)
        ));
        // Half-closed without a newline: still served.
        assert!(matches!(
            parse_request(b"{\"op\":\"ping\"}"),
            Ok(Request::Ping)
        ));
        assert!(matches!(parse_request(b""), Err(NoRequest::Closed)));

        let e = refused(b"\xff\xfe{\"op\":\"ping\"}\n");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("not UTF-8"), "{}", e.message);
        assert!(e.message.contains("offset 0"), "{}", e.message);

        let e = refused(b"not json\n");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("malformed request"), "{}", e.message);

        // The longest line accepted, then one byte more (as `take` cuts it).
        let mut max = b"{\"op\":\"ping\"}".to_vec();
        max.resize(MAX_REQUEST as usize, b' ');
        let mut line = max.clone();
        line.push(b'\n');
        assert!(matches!(parse_request(&line), Ok(Request::Ping)));
        let mut over = max;
        over.push(b' ');
        let e = refused(&over);
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("longer than"), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn accept_failures_back_off_to_a_second_and_log_once_per_second() {
        let mut b = AcceptBackoff::default();
        let start = Instant::now();
        // A burst at one instant: one log line, growing pauses.
        let mut delays = Vec::new();
        let mut logs = 0;
        for _ in 0..1_000_000 {
            let (d, report) = b.failed(start);
            delays.push(d);
            logs += usize::from(report.is_some());
        }
        assert_eq!(logs, 1, "a burst is logged once");
        assert_eq!(delays[0], ACCEPT_BACKOFF_MIN);
        assert!(
            delays.windows(2).all(|w| w[1] >= w[0]),
            "pauses never shrink"
        );
        assert_eq!(*delays.last().unwrap(), ACCEPT_BACKOFF_MAX);
        assert_eq!(
            delays.iter().filter(|d| **d < ACCEPT_BACKOFF_MAX).count(),
            7
        );

        // Failing for a minute, pausing as told: about 60 lines, each
        // covering the failures since the last.
        let mut b = AcceptBackoff::default();
        let (mut now, mut logged, mut covered, mut failures) = (start, 0, 0, 0);
        while now - start < Duration::from_secs(60) {
            let (d, report) = b.failed(now);
            failures += 1;
            if let Some(n) = report {
                logged += 1;
                covered += n;
            }
            now += d;
        }
        assert!(failures < 70, "{failures} attempts in a minute");
        assert!(
            (55..=61).contains(&logged),
            "{logged} log lines in a minute"
        );
        assert!(covered <= failures);

        // Alternating failure and success (one fd freed now and then):
        // pauses restart small, logs stay at one per second.
        let mut b = AcceptBackoff::default();
        let mut logs = 0;
        for i in 0..1000u32 {
            let (d, report) = b.failed(start + Duration::from_millis(u64::from(i)));
            assert_eq!(d, ACCEPT_BACKOFF_MIN);
            logs += usize::from(report.is_some());
            b.succeeded();
        }
        assert_eq!(logs, 1, "1000 failures within a second: one line");
    }
}
