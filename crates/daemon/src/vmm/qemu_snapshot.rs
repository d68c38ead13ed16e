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
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        let n = std::io::copy(&mut conn, &mut out)?;
        std::io::Write::flush(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(n)
    });
    let result = migrate(control_socket, &sock);
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

fn migrate(control_socket: &Path, sock: &Path) -> Result<(), VmmError> {
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
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
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
