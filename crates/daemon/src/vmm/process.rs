//! VMM processes: liveness (checked against the VM's tag, so a reused pid is
//! never mistaken for ours), signals, waiting for exit, pid files.

use std::path::Path;
use std::time::{Duration, Instant};

use super::process_tag;

/// True when `pid` is a live process whose command line carries `name`'s tag.
pub fn is_vm_process(pid: u32, name: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if is_zombie(pid) {
        return false;
    }
    let tag = process_tag(name);
    raw.split(|b| *b == 0).any(|arg| {
        String::from_utf8_lossy(arg)
            .split(|c: char| c.is_whitespace() || c == ',')
            .any(|token| token == tag)
    })
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
        })
        .unwrap_or(true)
}

/// Signal names `vm kill --signal` accepts.
pub fn parse_signal(name: &str) -> Option<i32> {
    let name = name.trim_start_matches("SIG").to_ascii_uppercase();
    Some(match name.as_str() {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        _ => return None,
    })
}

/// Sends `signal` to `pid`. A process already gone is success.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Waits until `name`'s process `pid` is gone; false on timeout.
pub async fn wait_exit(pid: u32, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_vm_process(pid, name) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !is_vm_process(pid, name)
}

/// Reads a pid file.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name() {
        assert_eq!(parse_signal("KILL"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("int"), Some(libc::SIGINT));
        assert_eq!(parse_signal("STOP"), None);
    }

    #[test]
    fn our_own_process_is_not_a_vm() {
        assert!(!is_vm_process(std::process::id(), "dev"));
        assert!(!is_vm_process(u32::MAX - 1, "dev"));
    }

    #[test]
    fn a_tagged_process_is_recognised_until_it_dies() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30",
                "x",
                &format!("console=ttyS0 {}", process_tag("tagged")),
            ])
            .spawn()
            .unwrap();
        // Give the child time to exec before reading its command line.
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            is_vm_process(child.id(), "tagged")
        });
        assert!(seen, "the tagged process was not recognised");
        assert!(!is_vm_process(child.id(), "tag"), "a prefix must not match");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_vm_process(child.id(), "tagged"));
    }
}
