//! A client for QEMU's guest agent (`qemu-ga`, on a virtio-serial port the
//! VMM exposes as a Unix socket): synchronise, run one program in the
//! guest, collect its exit code and output. Everything read from the guest
//! is bounded (line length, output size) and every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::VmmError;

/// The longest agent reply read (a line of JSON).
const MAX_LINE: u64 = 1 << 20;

/// What a program run through the agent ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A program to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRun {
    pub path: String,
    /// Visible to every guest user (`/proc/PID/cmdline`): nothing secret.
    pub args: Vec<String>,
    /// `NAME=VALUE`, the program's whole environment; empty: the agent's.
    pub env: Vec<String>,
    /// Written to the program's standard input (readable by root only on
    /// the way: the place for secrets).
    pub stdin: Vec<u8>,
}

impl AgentRun {
    /// `path` with `args`, the agent's environment, no input.
    pub fn new(path: &str, args: &[&str]) -> Self {
        AgentRun {
            path: path.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..AgentRun::default()
        }
    }
}

/// Runs `run` in the guest and waits (until `timeout`) for it to exit.
pub fn exec(socket: &Path, run: &AgentRun, timeout: Duration) -> Result<AgentOutput, VmmError> {
    let deadline = Instant::now() + timeout;
    let mut agent = Agent::connect(socket, deadline)?;
    agent.sync()?;
    let mut request = json!({"path": run.path, "arg": run.args, "capture-output": true});
    if !run.env.is_empty() {
        request["env"] = json!(run.env);
    }
    if !run.stdin.is_empty() {
        request["input-data"] = base64::engine::general_purpose::STANDARD
            .encode(&run.stdin)
            .into();
    }
    let started = agent.call("guest-exec", request)?;
    let pid = started["pid"]
        .as_i64()
        .ok_or_else(|| VmmError::Control(format!("guest agent: no pid in {started}")))?;
    loop {
        let status = agent.call("guest-exec-status", json!({ "pid": pid }))?;
        if status["exited"].as_bool() == Some(true) {
            return Ok(AgentOutput {
                code: status["exitcode"].as_i64().unwrap_or(-1) as i32,
                stdout: decoded(&status["out-data"]),
                stderr: decoded(&status["err-data"]),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmmError::Control(format!(
                "guest agent: {} did not finish within {}s",
                run.path,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(40));
    }
}

fn decoded(v: &Value) -> String {
    let bytes = v
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

struct Agent {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    deadline: Instant,
}

impl Agent {
    fn connect(socket: &Path, deadline: Instant) -> Result<Self, VmmError> {
        let err = |e: std::io::Error| VmmError::Control(format!("{}: {e}", socket.display()));
        let stream = UnixStream::connect(socket).map_err(err)?;
        let writer = stream.try_clone().map_err(err)?;
        Ok(Agent {
            writer,
            reader: BufReader::new(stream),
            deadline,
        })
    }

    /// `guest-sync-delimited`: the agent answers after a 0xFF byte, which
    /// tells where its replies to earlier (lost) requests end.
    fn sync(&mut self) -> Result<(), VmmError> {
        let id = u64::from(std::process::id()) << 20 | u64::from(rand_u16());
        self.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))?;
        let mut byte = [0u8; 1];
        loop {
            self.arm()?;
            self.reader
                .read_exact(&mut byte)
                .map_err(|e| self.io("waiting for the guest agent", e))?;
            if byte[0] == 0xff {
                break;
            }
        }
        loop {
            let reply = self.reply()?;
            if reply.as_u64() == Some(id) {
                return Ok(());
            }
        }
    }

    fn call(&mut self, command: &str, arguments: Value) -> Result<Value, VmmError> {
        self.send(&json!({"execute": command, "arguments": arguments}))?;
        self.reply()
    }

    fn send(&mut self, msg: &Value) -> Result<(), VmmError> {
        self.arm()?;
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io("writing to the guest agent", e))
    }

    /// The next `return` (or `error`) line.
    fn reply(&mut self) -> Result<Value, VmmError> {
        loop {
            self.arm()?;
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .map_err(|e| self.io("reading the guest agent", e))?;
            if n == 0 {
                return Err(VmmError::Control("guest agent: connection closed".into()));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
            if text.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue; // a partial line from before the sync
            };
            if let Some(e) = v.get("error") {
                let desc = e["desc"].as_str().unwrap_or("error");
                return Err(VmmError::Control(format!("guest agent: {desc}")));
            }
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
        }
    }

    /// Sets the socket's read and write timeouts to what is left before
    /// the deadline (a guest that stops reading its port must not hold a
    /// write either).
    fn arm(&mut self) -> Result<(), VmmError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(VmmError::Control("guest agent: no answer in time".into()));
        }
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .and_then(|()| self.writer.set_write_timeout(Some(left)))
            .map_err(|e| self.io("arming the guest agent socket", e))
    }

    fn io(&self, what: &str, e: std::io::Error) -> VmmError {
        VmmError::Control(format!("guest agent: {what}: {e}"))
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u16::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A guest agent on a socket: garbage from an earlier session, then
    /// the delimiter and the sync reply, then one exec that exits 3.
    #[test]
    fn exec_syncs_past_stale_bytes_and_returns_the_exit_code_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let id = serde_json::from_str::<Value>(&line).unwrap()["arguments"]["id"].clone();
            w.write_all(b"{\"return\": {\"pid\": 9\n").unwrap();
            w.write_all(&[0xff]).unwrap();
            w.write_all(format!("{{\"return\": {id}}}\n").as_bytes())
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            let request: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(request["execute"], "guest-exec", "{line}");
            let args = &request["arguments"];
            assert_eq!(args["path"], "/bin/x", "{line}");
            assert_eq!(args["arg"], json!(["a"]), "{line}");
            assert_eq!(args["env"], json!(["K=v"]), "{line}");
            let input = base64::engine::general_purpose::STANDARD
                .decode(args["input-data"].as_str().unwrap())
                .unwrap();
            assert_eq!(input, b"secret\n", "{line}");
            w.write_all(b"{\"return\": {\"pid\": 42}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"pid\":42"), "{line}");
            w.write_all(b"{\"return\": {\"exited\": false}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            let out = base64::engine::general_purpose::STANDARD.encode("hello\n");
            w.write_all(
                format!("{{\"return\": {{\"exited\": true, \"exitcode\": 3, \"out-data\": \"{out}\"}}}}\n")
                    .as_bytes(),
            )
            .unwrap();
        });
        let run = AgentRun {
            env: vec!["K=v".into()],
            stdin: b"secret\n".to_vec(),
            ..AgentRun::new("/bin/x", &["a"])
        };
        let out = exec(&sock, &run, Duration::from_secs(10)).unwrap();
        agent.join().unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stdout, "hello");
    }

    /// A hostile guest agent: `answer` gets the daemon's first line (the
    /// sync request, with its id) and writes whatever it likes back; the
    /// exec must end with an error by its deadline, never hang.
    fn hostile(answer: impl FnOnce(u64, &mut UnixStream) + Send + 'static) -> (Duration, String) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let guest = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).unwrap();
            let id = serde_json::from_str::<Value>(&line).unwrap()["arguments"]["id"]
                .as_u64()
                .unwrap();
            answer(id, &mut w);
        });
        let t = Instant::now();
        let e = exec(
            &sock,
            &AgentRun::new("/bin/x", &[]),
            Duration::from_millis(700),
        )
        .unwrap_err();
        let took = t.elapsed();
        drop(guest);
        (took, e.to_string())
    }

    /// Writes `chunk` over and over until the daemon hangs up.
    fn flood(w: &mut UnixStream, chunk: &[u8]) {
        while w.write_all(chunk).is_ok() {}
    }

    #[test]
    fn a_guest_that_floods_bytes_before_the_sync_ends_at_the_deadline() {
        let (took, e) = hostile(|_, w| flood(w, &[b'x'; 4096]));
        assert!(took < Duration::from_secs(3), "{took:?}: {e}");
    }

    #[test]
    fn an_endless_line_after_the_sync_ends_at_the_deadline() {
        let (took, e) = hostile(|id, w| {
            let _ = w.write_all(&[0xff]);
            let _ = w.write_all(format!("{{\"return\": {id}}}\n").as_bytes());
            let _ = w.write_all(b"{\"return\": \"");
            flood(w, &[b'a'; 65536]);
        });
        assert!(took < Duration::from_secs(3), "{took:?}: {e}");
    }

    #[test]
    fn sync_replies_with_another_id_end_at_the_deadline() {
        let (took, e) = hostile(|id, w| {
            let _ = w.write_all(&[0xff]);
            let other = format!("{{\"return\": {}}}\n", id + 1);
            flood(w, other.as_bytes());
        });
        assert!(took < Duration::from_secs(3), "{took:?}: {e}");
    }

    #[test]
    fn an_exec_that_never_exits_ends_at_the_deadline() {
        let (took, e) = hostile(|id, w| {
            let _ = w.write_all(&[0xff]);
            let _ = w.write_all(format!("{{\"return\": {id}}}\n").as_bytes());
            let _ = w.write_all(b"{\"return\": {\"pid\": 7}}\n");
            flood(w, b"{\"return\": {\"exited\": false}}\n");
        });
        assert!(took < Duration::from_secs(3), "{took:?}: {e}");
        assert!(
            e.contains("did not finish") || e.contains("no answer"),
            "{e}"
        );
    }

    #[test]
    fn a_silent_agent_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let _hold = std::thread::spawn(move || {
            let conn = listener.accept();
            std::thread::sleep(Duration::from_secs(3));
            drop(conn);
        });
        let t = Instant::now();
        let e = exec(
            &sock,
            &AgentRun::new("/bin/x", &[]),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{e}");
    }
}
