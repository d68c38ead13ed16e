//! What one client of the socket can hold: the request deadline, the
//! connection cap, the request size, undecodable requests, and failed
//! accepts (out of file descriptors) that must not spin. The daemon runs
//! in-process on a temporary socket, with limits shortened for the test;
//! as root in a network namespace of its own, as in `api.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_api::{client, ApiError, ErrorCode, Event, Request};
use bangerd::server::{Limits, MAX_REQUEST};

mod common;

use common::daemon::Daemon;

fn ping(d: &Daemon) -> Result<serde_json::Value, ApiError> {
    d.call(Request::Ping)
}

/// A raw connection that gives up reading after `timeout`.
fn connect(d: &Daemon, timeout: Duration) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Reads the one line the daemon answers and checks that it then closes
/// the connection.
fn only_error_line(s: UnixStream) -> ApiError {
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("no answer from the daemon: {e}"));
    assert!(line.ends_with('\n'), "one whole line, got {line:?}");
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after the error: {rest:?}"),
        // Closed with our unread request still queued: a reset, no data.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    match serde_json::from_str::<Event>(&line).unwrap() {
        Event::Error(e) => e,
        other => panic!("expected an error event, got {other:?}"),
    }
}

fn limits(request_deadline: Duration, max_connections: usize) -> Limits {
    Limits {
        request_deadline,
        max_connections,
        ..Limits::default()
    }
}

#[test]
fn production_limits_are_the_documented_ones() {
    let l = Limits::default();
    assert_eq!(l.request_deadline, Duration::from_secs(10));
    assert_eq!(l.max_connections, 64);
    assert_eq!(MAX_REQUEST, 1 << 20);
}

#[test]
fn an_idle_or_incomplete_request_is_closed_after_the_deadline_with_an_error() {
    let deadline = Duration::from_millis(500);
    let d = Daemon::start_with("limits", limits(deadline, 8));

    let t0 = Instant::now();
    let idle = connect(&d, Duration::from_secs(10));
    let e = only_error_line(idle);
    let waited = t0.elapsed();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message.contains("no complete request line"),
        "{}",
        e.message
    );
    assert!(
        waited >= deadline,
        "closed after {waited:?}, before the deadline"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );

    // Half a request, then silence: the same.
    let mut partial = connect(&d, Duration::from_secs(10));
    partial.write_all(b"{\"op\":\"vm_li").unwrap();
    let e = only_error_line(partial);
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("got 12 bytes"), "{}", e.message);

    // The deadline is for the request only: a request sent in time is
    // answered, however long the connection then stays open.
    let mut slow = connect(&d, Duration::from_secs(10));
    std::thread::sleep(deadline / 2);
    slow.write_all(b"{\"op\":\"ping\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(slow).read_line(&mut line).unwrap();
    assert!(line.starts_with("{\"ok\""), "{line}");
    ping(&d).unwrap();
}

/// Opens `n` idle connections the daemon admitted. One refused (a `busy`
/// line at once: a slot of a connection just answered may not be free
/// yet) is replaced; `tries` bounds the replacements.
fn hold(d: &Daemon, n: usize, mut tries: u32) -> Vec<UnixStream> {
    let mut held: Vec<UnixStream> = Vec::new();
    while held.len() < n {
        held.extend((held.len()..n).map(|_| connect(d, Duration::from_secs(10))));
        // A refusal is written as the connection is accepted.
        std::thread::sleep(Duration::from_millis(300));
        held.retain(|s| {
            s.set_nonblocking(true).unwrap();
            let refused = !matches!(
                (&*s).read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            );
            s.set_nonblocking(false).unwrap();
            !refused
        });
        assert!(
            tries > 0 || held.len() == n,
            "only {} of {n} admitted",
            held.len()
        );
        tries = tries.saturating_sub(1);
    }
    held
}

#[test]
fn connections_beyond_the_cap_are_told_busy_until_some_close() {
    let cap = 4;
    let d = Daemon::start_with("limits", limits(Duration::from_secs(60), cap));
    let held = hold(&d, cap, 5);

    // Through the real client: a clear, immediate `busy`.
    let t0 = Instant::now();
    let e = ping(&d).unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy, "{e:?}");
    assert!(
        e.message.contains(&format!("serving {cap} connections"))
            && e.message.contains("try again"),
        "{}",
        e.message
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "busy took {:?}",
        t0.elapsed()
    );

    // A raw connection that sends nothing gets the line at once, too.
    let t0 = Instant::now();
    let e = only_error_line(connect(&d, Duration::from_secs(5)));
    assert_eq!(e.code, ErrorCode::Busy);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "busy took {:?}",
        t0.elapsed()
    );

    // Once the held connections close, the daemon serves again.
    drop(held);
    let t0 = Instant::now();
    loop {
        match ping(&d) {
            Ok(_) => break,
            Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                assert_eq!(e.code, ErrorCode::Busy, "{e:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("still refused after the connections closed: {e:?}"),
        }
    }
    // And every slot came back: `cap` fit at once again, and no more.
    let held = hold(&d, cap, 5);
    assert_eq!(ping(&d).unwrap_err().code, ErrorCode::Busy);
    drop(held);
}

#[test]
fn a_request_that_is_not_utf8_or_not_json_gets_an_error_line() {
    let d = Daemon::start_with("limits", Limits::default());

    let mut s = connect(&d, Duration::from_secs(10));
    s.write_all(b"{\"op\":\"vm_show\",\"name\":\"\xff\xfe\"}\n")
        .unwrap();
    let e = only_error_line(s);
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("not UTF-8"), "{}", e.message);
    assert!(e.message.contains("offset 24"), "{}", e.message);

    let mut s = connect(&d, Duration::from_secs(10));
    s.write_all(b"ping\n").unwrap();
    let e = only_error_line(s);
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("malformed request"), "{}", e.message);

    ping(&d).unwrap();
}

#[test]
fn a_request_line_over_the_limit_gets_an_error_line() {
    let d = Daemon::start_with("limits", Limits::default());
    let send = |body: Vec<u8>| {
        let s = connect(&d, Duration::from_secs(10));
        let mut w = s.try_clone().unwrap();
        // The daemon may answer and close before taking it all.
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&body);
        });
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        writer.join().unwrap();
        serde_json::from_str::<Event>(&line).unwrap()
    };
    // A valid request padded to exactly the limit is served...
    let mut body = b"{\"op\":\"ping\"}".to_vec();
    body.resize(MAX_REQUEST as usize, b' ');
    body.push(b'\n');
    assert!(matches!(send(body.clone()), Event::Ok(_)));

    // ...one byte more is not, whatever follows.
    body.insert(0, b' ');
    match send(body) {
        Event::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(
                e.message.contains("longer than 1048576 bytes"),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let mut endless = vec![b'a'; 3 << 20];
    endless.push(b'\n');
    match send(endless) {
        Event::Error(e) => assert!(e.message.contains("longer than"), "{}", e.message),
        other => panic!("expected an error, got {other:?}"),
    }
    ping(&d).unwrap();
}

/// Set in the child process of [`failed_accepts_do_not_spin`].
const CHILD_ENV: &str = "BANGER_TEST_EMFILE_CHILD";

/// Runs in a child process only (see below): a daemon whose
/// RLIMIT_NOFILE leaves it a few descriptors, until stdin closes.
#[test]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // No cap, no deadline to speak of: only the descriptors run out.
    let d = Daemon::start_with("limits", limits(Duration::from_secs(600), 10_000));
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved), 0);
        let low = libc::rlimit {
            rlim_cur: open + 8,
            rlim_max: saved.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    // On a line of its own: libtest's "test emfile_child ... " precedes it.
    println!("\nREADY {}", d.socket.display());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    // SAFETY: as above; the cleanup (`ip netns del`) needs descriptors.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) };
    drop(d);
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A daemon out of file descriptors keeps failing to accept: it must
/// pause between tries (not burn a core) and serve again once descriptors
/// free up. The limit is lowered in a child process, never in this one.
#[test]
fn failed_accepts_do_not_spin() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["emfile_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(path) = line.strip_prefix("READY ") {
                let _ = tx.send(PathBuf::from(path));
            }
        }
    });
    let Ok(socket) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the child daemon did not start: {}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
    };

    // More connections than it has descriptors for: the first few are
    // accepted (and idle), the rest wait in the backlog while accept fails.
    let held: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - before;

    // Descriptors free up: it serves again.
    drop(held);
    let t0 = Instant::now();
    let served = loop {
        match client::call::<serde_json::Value>(&socket, &Request::Ping, |_| {}) {
            Ok(_) => break Ok(()),
            Err(e) if t0.elapsed() > Duration::from_secs(10) => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    drop(child.stdin.take());
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(
        used < 0.5,
        "the daemon used {used:.2} s of CPU in 2 s while out of descriptors: accept spins"
    );
    served.unwrap_or_else(|e| panic!("not served after descriptors freed up: {e:?}"));
}
