//! VMM processes: liveness (checked against the VM's tag and the process
//! start time, so a reused pid is never mistaken for ours), signals, pid
//! files.

use std::path::Path;

use super::{process_tag, RuntimeHandle};

/// The handle of live process `pid`, with its start time.
pub fn handle_of(pid: u32) -> Option<RuntimeHandle> {
    Some(RuntimeHandle {
        pid,
        start_time: start_time(pid)?,
    })
}

/// True while `handle` names a live process that started when it did and
/// carries `name`'s tag. A start time of 0 (a VM recorded before start
/// times were kept) is checked by the tag alone.
pub fn is_alive(handle: &RuntimeHandle, name: &str) -> bool {
    (handle.start_time == 0 || start_time(handle.pid) == Some(handle.start_time))
        && is_vm_process(handle.pid, name)
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // rest starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

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

/// Live processes whose command line has a token equal to `tag` (or, with
/// `prefix`, starting with it) and names a path under `dir`: the VMMs this
/// daemon started there (another daemon on the host has directories of
/// its own, and may use the same VM names).
pub fn tagged_under(tag: &str, prefix: bool, dir: &Path) -> Vec<u32> {
    let mut under = dir.as_os_str().as_encoded_bytes().to_vec();
    under.push(b'/');
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let tagged = raw.split(|b| *b == 0).any(|arg| {
                String::from_utf8_lossy(arg)
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .any(|token| match prefix {
                        true => token.starts_with(tag),
                        false => token == tag,
                    })
            });
            tagged && raw.windows(under.len()).any(|w| w == under.as_slice()) && !is_zombie(*pid)
        })
        .collect()
}

/// True when `pid` is gone or a zombie (dead, not yet reaped).
pub fn is_zombie(pid: u32) -> bool {
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
    let upper = name.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match name {
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

/// Reads a pid file.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The same tag under another daemon's directory is not ours; a
    /// longer name is not the VM's.
    #[test]
    fn tagged_under_matches_the_tag_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (mine, theirs) = (dir.path().join("mine"), dir.path().join("theirs"));
        let pidfile = format!("{}/vms/dev/vmm.pid", mine.display());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", "banger-vm=dev", &pidfile])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until it has run `exec`, the child still shows this test's
        // command line.
        let start = std::time::Instant::now();
        while !std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("banger-vm=dev"))
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = [
            tagged_under("banger-vm=dev", false, &mine),
            tagged_under("banger-vm=dev", false, &theirs),
            tagged_under("banger-vm=de", false, &mine),
            tagged_under("banger-vm=de", true, &mine),
        ]
        .map(|pids| pids.contains(&pid));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, [true, false, false, true]);
    }

    #[test]
    fn signals_parse_by_name() {
        assert_eq!(parse_signal("KILL"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("int"), Some(libc::SIGINT));
        assert_eq!(parse_signal("STOP"), None);
        assert_eq!(parse_signal("sigint"), Some(libc::SIGINT));
        assert_eq!(parse_signal("SIGSIGKILL"), None, "one SIG prefix only");
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
        let handle = handle_of(child.id()).unwrap();
        assert!(is_alive(&handle, "tagged"));
        let reused = RuntimeHandle {
            start_time: handle.start_time + 1,
            ..handle
        };
        assert!(
            !is_alive(&reused, "tagged"),
            "another start time is another process"
        );
        assert!(!is_vm_process(child.id(), "tag"), "a prefix must not match");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_vm_process(child.id(), "tagged"));
        assert!(!is_alive(&handle, "tagged"));
    }
}
