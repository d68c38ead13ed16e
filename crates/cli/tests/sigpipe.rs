//! A write to a closed pipe must be an error, never the end of a
//! long-lived banger process. `banger` resets SIGPIPE to its default so
//! that `banger vm list | head` ends quietly; the daemon (which feeds a
//! guest's `ssh` on its stdin: `vm cp` in, workspaces) and `banger mcp`
//! (which feeds `vm_exec`'s stdin to `ssh`) would otherwise die the moment
//! the other end exits first: a hostile guest, a bad `vm cp` destination
//! or a command that does not read its input could end the daemon for
//! every user. Both run the real binary; both need root (a daemon in a
//! network namespace of its own; the MCP test acts as root so that no
//! user key is made) and say why they skip otherwise.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root (a daemon in a network namespace; MCP as root)");
    }
    root
}

/// `banger daemon` in a network namespace of its own, removed on drop.
struct Daemon {
    child: Child,
    netns: String,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let id = std::process::id();
        let netns = format!("banger-t-sigpipe-{id}");
        let ok = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add");
        let socket = dir.path().join("run/banger.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(env!("CARGO_BIN_EXE_banger"))
            .arg("daemon")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--image-dir")
            .arg(dir.path().join("images"))
            .args(["--bridge", &format!("bgsp{}", id % 100_000)])
            .args(["--subnet", "10.251.7.0/24", "--dns-port", "0"])
            .args(["--templates", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            netns,
            socket,
            _dir: dir,
        };
        let started = Instant::now();
        while d.ask().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the daemon did not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// `vm list`'s answer line, or `None` when nothing answers.
    fn ask(&self) -> Option<String> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.write_all(b"{\"op\":\"vm_list\"}\n").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        (!line.is_empty()).then_some(line)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn the_daemon_outlives_a_closed_pipe() {
    if !root() {
        return;
    }
    let d = Daemon::start();
    // What a write into the stdin of a guest's `ssh` that exited raises.
    // SAFETY: as above.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGPIPE) };
    std::thread::sleep(Duration::from_millis(500));
    let answer = d.ask();
    assert_eq!(answer.as_deref(), Some("{\"ok\":[]}\n"), "the daemon died");
}

/// A daemon that answers every request with the SSH details of a VM that
/// `ssh` cannot reach (an empty host name: it fails at once, no packet).
fn fake_daemon(dir: &Path) -> PathBuf {
    let socket = dir.join("banger.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let answer = json!({ "ok": {
        "ip": "", "user": "root", "identity_file": "/nonexistent/key",
        "known_hosts": "/dev/null", "config_file": "/dev/null" } });
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = writeln!(conn, "{answer}");
        }
    });
    socket
}

#[test]
fn banger_mcp_outlives_a_command_that_leaves_its_stdin_unread() {
    if !root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let socket = fake_daemon(t.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(&socket)
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |v: Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}}),
    );
    lines.next().unwrap().unwrap();
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    // More input than a pipe holds, for a command that never reads it.
    let input = "y".repeat(4 << 20);
    send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "vm_exec", "arguments": {"name": "dev", "command": ["true"], "stdin": input}}}),
    );
    let answer = lines.next().expect("an answer to vm_exec").unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["id"], 2, "{answer}");
    send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    let listed = lines.next().expect("the server is still there").unwrap();
    assert!(listed.contains("vm_exec"), "{listed}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
