//! QEMU templates: a paused VM's device and memory state saved to a file
//! (migration to a Unix socket the daemon listens on, written out by the
//! daemon), and a new QEMU started from that file (`-incoming fd:N`, the
//! file opened by the daemon, so the VMM's uid needs no access to it).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{qmp, VmmError};

/// How long saving or loading a VM's state may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The file QEMU's saved state is in, in a snapshot directory.
pub fn state_file(dir: &Path) -> std::path::PathBuf {
    dir.join("vmstate")
}

/// The descriptor number QEMU reads an incoming state from.
pub const INCOMING_FD: i32 = 4;

/// Pauses the VM behind `control_socket` and writes its state to `dest`
/// (mode 0600). The QEMU is left paused, for the caller to end.
pub fn save(control_socket: &Path, dest: &Path) -> Result<(), VmmError> {
    save_within(control_socket, dest, MIGRATION_TIMEOUT)
}

/// [`save`], giving up after `timeout`; the stream is read with that as
/// its idle limit too, so a VMM that connects and then stalls cannot hold
/// the daemon (and the template build lock) once the migration is given
/// up on.
fn save_within(control_socket: &Path, dest: &Path, timeout: Duration) -> Result<(), VmmError> {
    let io = |what: String| move |source| VmmError::Io { what, source };
    let dir = control_socket
        .parent()
        .ok_or_else(|| VmmError::Control("control socket has no directory".into()))?;
    let sock = dir.join("migrate.sock");
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(io(format!("listening on {}", sock.display())))?;
    hand_to_vmm(&sock, control_socket)?;
    let out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dest)
            .map_err(io(format!("creating {}", dest.display())))?
    };
    let writer = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(timeout))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        let n = std::io::copy(&mut conn, &mut out)?;
        std::io::Write::flush(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(n)
    });
    let result = migrate(control_socket, &sock, timeout);
    if result.is_err() {
        // Unblock the writer if QEMU never connected.
        let _ = std::os::unix::net::UnixStream::connect(&sock);
    }
    let written = writer.join();
    let _ = std::fs::remove_file(&sock);
    result?;
    match written {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(VmmError::Io {
            what: format!("writing {}", dest.display()),
            source,
        }),
        Err(_) => Err(VmmError::Control("the state writer panicked".into())),
    }
}

/// Gives `sock` to the owner of `control_socket`: QEMU runs as the VM's
/// own uid and must be able to connect. Both are in the VMM's run
/// directory, which that uid owns and may change under the daemon, so no
/// symbolic link is followed (a link planted at `sock` must not make root
/// hand a host file to the VMM's uid).
fn hand_to_vmm(sock: &Path, control_socket: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::MetadataExt;
    let io = |what: String| move |source| VmmError::Io { what, source };
    let owner = std::fs::symlink_metadata(control_socket)
        .map_err(io(format!("reading {}", control_socket.display())))?;
    std::os::unix::fs::lchown(sock, Some(owner.uid()), Some(owner.gid()))
        .map_err(io(format!("handing {} to the VMM", sock.display())))
}

fn migrate(control_socket: &Path, sock: &Path, timeout: Duration) -> Result<(), VmmError> {
    qmp::execute(control_socket, "stop", serde_json::Value::Null)?;
    // The default bandwidth cap (32 MiB/s) is for live migration over a
    // network; a paused VM to a local file goes as fast as it can.
    qmp::execute(
        control_socket,
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 40}),
    )?;
    qmp::execute(
        control_socket,
        "migrate",
        json!({"uri": format!("unix:{}", sock.display())}),
    )?;
    let deadline = Instant::now() + timeout;
    loop {
        let state = qmp::execute(control_socket, "query-migrate", serde_json::Value::Null)?;
        match state["status"].as_str().unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(VmmError::Control(format!(
                    "saving the VM state failed: {}",
                    state["error-desc"].as_str().unwrap_or("no reason given")
                )))
            }
            _ if Instant::now() >= deadline => {
                return Err(VmmError::Control(
                    "saving the VM state did not finish in time".into(),
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits until a QEMU started with `-incoming` has loaded its state, then
/// runs the VM (the state was saved paused, so QEMU keeps it paused).
pub fn wait_restored(control_socket: &Path) -> Result<(), VmmError> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let status = qmp::execute(control_socket, "query-status", serde_json::Value::Null)?;
        match status["status"].as_str().unwrap_or("") {
            "running" => return Ok(()),
            "paused" => {
                let migration =
                    qmp::execute(control_socket, "query-migrate", serde_json::Value::Null)?;
                if migration["status"] == "completed" {
                    qmp::execute(control_socket, "cont", serde_json::Value::Null)?;
                }
            }
            "inmigrate" | "prelaunch" | "restore-vm" => {}
            other => {
                let migration =
                    qmp::execute(control_socket, "query-migrate", serde_json::Value::Null)
                        .unwrap_or_default();
                return Err(VmmError::Control(format!(
                    "restoring the VM state failed (status {other}): {}",
                    migration["error-desc"]
                        .as_str()
                        .unwrap_or("no reason given")
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(VmmError::Control(
                "restoring the VM state did not finish in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;

    /// A QMP server whose migration connects to the daemon's socket and
    /// then sends nothing, and never completes (a wedged QEMU).
    fn wedged_qemu(control: &Path) {
        use std::io::{BufRead, BufReader, Write};
        let listener = UnixListener::bind(control).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let _ = w.write_all(b"{\"QMP\": {}}\n");
                let mut line = String::new();
                for _ in 0..2 {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let reply = match v["execute"].as_str() {
                        Some("query-migrate") => r#"{"return": {"status": "active"}}"#,
                        Some("migrate") => {
                            let uri = v["arguments"]["uri"].as_str().unwrap();
                            let path = uri.strip_prefix("unix:").unwrap();
                            held.push(std::os::unix::net::UnixStream::connect(path).unwrap());
                            r#"{"return": {}}"#
                        }
                        _ => r#"{"return": {}}"#,
                    };
                    let _ = w.write_all(format!("{reply}\n").as_bytes());
                }
            }
        });
    }

    #[test]
    fn a_vmm_that_stalls_its_migration_does_not_hold_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.sock");
        wedged_qemu(&control);
        let dest = dir.path().join("vmstate");
        let (tx, rx) = std::sync::mpsc::channel();
        let c = control.clone();
        std::thread::spawn(move || {
            let _ = tx.send(save_within(&c, &dest, Duration::from_millis(500)));
        });
        let saved = rx.recv_timeout(Duration::from_secs(10));
        assert!(
            matches!(saved, Ok(Err(_))),
            "save did not give up: {saved:?}"
        );
    }

    /// The VMM's uid owns the run directory: a link it puts where the
    /// migration socket was must not make root give away what it names.
    #[test]
    fn a_link_at_the_socket_path_hands_nothing_over() {
        // SAFETY: geteuid has no side effects.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (chown to another uid)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.sock");
        let precious = dir.path().join("precious");
        std::fs::write(&control, "").unwrap();
        std::fs::write(&precious, "root's").unwrap();
        std::os::unix::fs::chown(&control, Some(4242), Some(4242)).unwrap();
        let sock = dir.path().join("migrate.sock");
        std::os::unix::fs::symlink(&precious, &sock).unwrap();
        hand_to_vmm(&sock, &control).unwrap();
        let meta = std::fs::metadata(&precious).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "the link was followed");
        let link = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!(link.uid(), 4242);
    }
}
