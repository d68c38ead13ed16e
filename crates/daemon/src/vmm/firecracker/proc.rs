//! Firecracker's process: waiting for its API socket, killing it (and
//! removing its jail) when a start fails, reaping it when it runs on; and
//! the small host checks the backend makes.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::jail::Jail;
use super::START_TIMEOUT;
use crate::vmm::{process, LaunchSpec, RuntimeHandle, VmmError};

/// A Firecracker process that has just been started.
pub(super) struct Started {
    pub child: Child,
    pub jail: Option<Jail>,
    /// The API socket, as the daemon reaches it.
    pub socket: PathBuf,
    /// Firecracker's own log (on the host).
    pub log: PathBuf,
}

impl Started {
    /// Waits for the API socket; a Firecracker that exits first failed,
    /// and its stderr says why.
    pub(super) fn wait_socket(mut self, spec: &LaunchSpec) -> Result<Started, VmmError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let why = last_line(&spec.stderr_log)
                    .unwrap_or_else(|| format!("Firecracker exited at start ({status})"));
                self.abandon();
                return Err(VmmError::Launch(why));
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(self);
            }
            if Instant::now() >= deadline {
                self.abandon();
                return Err(VmmError::Launch(format!(
                    "Firecracker did not open its API socket within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process and removes its jail: a failed start leaves
    /// nothing.
    pub(super) fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(j) = &self.jail {
            let _ = j.remove();
        }
    }

    /// The process runs on; a thread reaps it when it ends (after a daemon
    /// restart, init does).
    pub(super) fn detach(mut self) -> Result<RuntimeHandle, VmmError> {
        match process::handle_of(self.child.id()) {
            Some(handle) => {
                std::thread::spawn(move || self.child.wait());
                Ok(handle)
            }
            None => {
                let status = self.child.try_wait().ok().flatten();
                self.abandon();
                Err(VmmError::Launch(format!(
                    "Firecracker exited right after starting ({status:?})"
                )))
            }
        }
    }

    /// Runs `steps`; on failure the process goes, and the error says which
    /// call failed.
    pub(super) fn then(
        self,
        steps: impl FnOnce(&Started) -> Result<(), VmmError>,
    ) -> Result<RuntimeHandle, VmmError> {
        match steps(&self) {
            Ok(()) => self.detach(),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }
}

pub(super) fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim()
        .lines()
        .last()
        .map(|l| format!("firecracker: {}", l.trim()))
}

pub(super) fn no_binary() -> String {
    "firecracker is not on PATH; install it or pass --firecracker-bin (docs/firecracker.md)".into()
}

/// The group that owns /dev/kvm.
pub(super) fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/dev/kvm").ok().map(|m| m.gid())
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(super) fn tempdir_in(parent: &Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(format!(".fc-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// True when `pid`'s command line has `--id ID`.
pub(super) fn has_instance_id(pid: u32, id: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}
