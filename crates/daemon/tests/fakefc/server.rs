//! The fake Firecracker: an in-process server on a Unix socket that checks
//! every request against the contract and Firecracker's rules of order
//! (nothing but actions, drive and VM patches, snapshots and reads after
//! the guest started; `/snapshot/load` only on a fresh process), answers
//! with the documented status codes, and can be told to fail any call.
//! The process the backend spawns is a shell script (see [`FakeFc::bin`])
//! that links the API socket it is given to this server's, writes its pid
//! and sleeps under a command line that keeps the backend's `--id` tag.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::contract::Contract;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
    pub status: u16,
}

#[derive(Default)]
struct Instance {
    pid: Option<u32>,
    started: bool,
    paused: bool,
    configured: BTreeMap<String, Value>,
    drives: BTreeMap<String, Value>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    violations: Vec<String>,
    /// `METHOD /path` to fail once, with this status.
    fail: Option<(String, u16)>,
    vm: Instance,
}

pub struct FakeFc {
    pub dir: PathBuf,
    pub server: PathBuf,
    state: Arc<Mutex<State>>,
}

fn reply(status: u16, body: &Value) -> String {
    let text = if status == 204 {
        String::new()
    } else {
        body.to_string()
    };
    format!(
        "HTTP/1.1 {status} {}\r\nServer: Firecracker API\r\nContent-Length: {}\r\n\r\n{text}",
        if status < 300 { "OK" } else { "Bad Request" },
        text.len()
    )
}

impl FakeFc {
    /// Starts the server in `dir` (the socket, the pid file and the fake
    /// binary live there).
    pub fn start(dir: &Path, contract: Arc<Contract>) -> FakeFc {
        let server = dir.join("fake-fc.sock");
        let listener = UnixListener::bind(&server).expect("binding the fake Firecracker");
        let state = Arc::new(Mutex::new(State::default()));
        let (st, pid_file) = (state.clone(), dir.join("fc.pid"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                serve(conn, &contract, &st, &pid_file);
            }
        });
        FakeFc {
            dir: dir.to_path_buf(),
            server,
            state,
        }
    }

    /// A `firecracker` that hands its `--api-sock` to this server (or, with
    /// `fail_start`, says why it cannot start and exits 1).
    pub fn bin(&self, fail_start: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(if fail_start {
            "firecracker-broken"
        } else {
            "firecracker"
        });
        let body = if fail_start {
            "echo 'Error: cannot open /dev/kvm: No such file or directory' >&2\nexit 1\n"
                .to_string()
        } else {
            format!(
                r#"sock=""; prev=""
for a in "$@"; do
    [ "$prev" = "--api-sock" ] && sock="$a"
    prev="$a"
done
[ -n "$sock" ] || {{ echo "no --api-sock" >&2; exit 2; }}
echo $$ > '{pid}'
ln -s '{server}' "$sock" || exit 1
exec perl -e 'sleep' -- "$@"
"#,
                pid = self.dir.join("fc.pid").display(),
                server = self.server.display()
            )
        };
        std::fs::write(
            &path,
            format!("#!/bin/sh\n# a fake firecracker for banger's contract tests\n{body}"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Makes the next `method path` fail with `status`.
    pub fn fail(&self, method: &str, path: &str, status: u16) {
        self.state.lock().unwrap().fail = Some((format!("{method} {path}"), status));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// `METHOD /path` of every call, in order.
    pub fn call_lines(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// Every request that broke the contract or the rules of order.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// The drive `id` as last configured or patched.
    pub fn drive(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().vm.drives.get(id).cloned()
    }

    pub fn is_paused(&self) -> bool {
        self.state.lock().unwrap().vm.paused
    }
}

fn read_request(conn: &UnixStream) -> Option<(String, String, Option<Value>)> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).ok()?;
    let body = (length > 0).then(|| serde_json::from_slice(&body).unwrap_or(Value::Null));
    Some((method, path, body))
}

fn serve(mut conn: UnixStream, contract: &Contract, state: &Mutex<State>, pid_file: &Path) {
    let Some((method, path, body)) = read_request(&conn) else {
        return;
    };
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let mut st = state.lock().unwrap();
    if st.vm.pid != pid {
        // A new process: a fresh instance.
        st.vm = Instance {
            pid,
            ..Instance::default()
        };
    }
    let (status, answer) = answer(contract, &mut st, &method, &path, body.as_ref());
    st.calls.push(Call {
        method,
        path,
        body,
        status,
    });
    drop(st);
    let _ = conn.write_all(reply(status, &answer).as_bytes());
}

fn fault(msg: &str) -> Value {
    json!({"fault_message": msg})
}

fn answer(
    c: &Contract,
    st: &mut State,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let (m, params) = match c.find(method, path) {
        Ok(found) => found,
        Err(e) => {
            st.violations.push(format!("{method} {path}: {e}"));
            return (400, fault(&e));
        }
    };
    if let Err(e) = c.check_body(&m, &params, body) {
        st.violations.push(format!("{method} {path}: {e}"));
        return (400, fault(&e));
    }
    if let Err(e) = order(st, method, &m.template, body) {
        st.violations.push(format!("{method} {path}: {e}"));
        return (400, fault(&e));
    }
    if let Some((what, status)) = st.fail.clone() {
        if what == format!("{method} {path}") {
            st.fail = None;
            assert!(
                c.documents(&m, status),
                "{status} is not documented for {what}"
            );
            return (status, fault("injected failure"));
        }
    }
    apply(st, method, &m.template, path, body);
    let ok = c.success(&m);
    let answer = if method == "GET" {
        json!({"id": "anonymous-instance", "state": if st.vm.started { "Running" } else { "Not started" },
               "vmm_version": c.version(), "app_name": "Firecracker"})
    } else {
        Value::Null
    };
    (ok, answer)
}

/// Firecracker's rules of order.
fn order(st: &State, method: &str, template: &str, body: Option<&Value>) -> Result<(), String> {
    let vm = &st.vm;
    let action = body.and_then(|b| b["action_type"].as_str()).unwrap_or("");
    match (method, template) {
        ("GET", _) => Ok(()),
        ("PUT", "/actions") if action == "InstanceStart" && vm.started => {
            Err("InstanceStart twice".into())
        }
        ("PUT", "/actions")
            if action == "InstanceStart" && !vm.configured.contains_key("/boot-source") =>
        {
            Err("InstanceStart without a boot source".into())
        }
        ("PUT", "/actions") if action != "InstanceStart" && !vm.started => {
            Err(format!("{action} before the guest started"))
        }
        ("PUT", "/actions") => Ok(()),
        ("PATCH", "/drives/{drive_id}") if !vm.started => {
            Err("drive PATCH is post-boot only".into())
        }
        ("PATCH", "/drives/{drive_id}") => {
            let id = body.and_then(|b| b["drive_id"].as_str()).unwrap_or("");
            if vm.drives.contains_key(id) {
                Ok(())
            } else {
                Err(format!("no drive {id}"))
            }
        }
        ("PATCH", "/vm") if !vm.started => Err("PATCH /vm before the guest started".into()),
        ("PATCH", "/vm") => Ok(()),
        ("PUT", "/snapshot/create") if !vm.paused => {
            Err("snapshot of a VM that is not paused".into())
        }
        ("PUT", "/snapshot/create") => Ok(()),
        ("PUT", "/snapshot/load") if vm.started || vm.configured.keys().any(|k| k != "/logger") => {
            Err("snapshot load on a configured instance".into())
        }
        (_, t) if vm.started => Err(format!(
            "{method} {t} after the guest started (pre-boot only)"
        )),
        _ => Ok(()),
    }
}

/// What a successful call changes.
fn apply(st: &mut State, method: &str, template: &str, path: &str, body: Option<&Value>) {
    let vm = &mut st.vm;
    let body = body.cloned().unwrap_or(Value::Null);
    match (method, template) {
        ("PUT", "/actions") if body["action_type"] == "InstanceStart" => vm.started = true,
        ("PUT", "/actions") if body["action_type"] == "SendCtrlAltDel" => {
            // The guest reboots, and Firecracker exits.
            if let Some(pid) = vm.pid {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        ("PUT", "/drives/{drive_id}") => {
            vm.drives
                .insert(body["drive_id"].as_str().unwrap_or("").into(), body.clone());
        }
        ("PATCH", "/drives/{drive_id}") => {
            if let Some(d) = vm.drives.get_mut(body["drive_id"].as_str().unwrap_or("")) {
                d["path_on_host"] = body["path_on_host"].clone();
            }
        }
        ("PATCH", "/vm") => vm.paused = body["state"] == "Paused",
        ("PUT", "/snapshot/create") => {
            let saved = json!({"drives": vm.drives});
            std::fs::write(
                body["snapshot_path"].as_str().unwrap_or(""),
                saved.to_string(),
            )
            .unwrap();
            std::fs::write(
                body["mem_file_path"].as_str().unwrap_or(""),
                b"guest memory",
            )
            .unwrap();
        }
        ("PUT", "/snapshot/load") => {
            let saved = std::fs::read_to_string(body["snapshot_path"].as_str().unwrap_or(""))
                .unwrap_or_default();
            let saved: Value = serde_json::from_str(&saved).unwrap_or(Value::Null);
            if let Some(d) = saved["drives"].as_object() {
                vm.drives = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            vm.started = true;
            vm.paused = body["resume_vm"] != true;
        }
        ("PUT", _) => {
            vm.configured.insert(path.to_string(), body);
        }
        _ => {}
    }
}
