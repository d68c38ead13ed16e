//! What a smoke or bench run that was killed left behind (its network
//! namespace `banger-smoke-PID` with the daemon and VMMs inside, an image
//! build, loop devices, its work directory `/var/tmp/banger-smoke-PID` and
//! group `bgr-smoke-gPID`), found by the run's PID in those names once
//! that PID is gone, and removed before a new run starts.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NS_PREFIX: &str = "banger-smoke-";
const WORK_PREFIX: &str = "/var/tmp/banger-smoke-";

/// The run's PID in a namespace or work directory name of ours.
fn run_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(NS_PREFIX)?;
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The runs whose namespace or work directory is still there, with their
/// PID gone.
fn dead_runs() -> BTreeSet<u32> {
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let dirs = std::fs::read_dir("/var/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .chain(dirs)
        .filter_map(|n| run_pid(&n))
        .filter(|pid| !alive(*pid) && *pid != std::process::id())
        .collect()
}

/// Processes of run `pid`: in its namespace, or naming its work directory
/// (an image build runs in the host's namespace).
fn processes_of(pid: u32) -> Vec<i32> {
    let ns = format!("{NS_PREFIX}{pid}");
    let mut pids: BTreeSet<i32> = Command::new("ip")
        .args(["netns", "pids", &ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let work = format!("{WORK_PREFIX}{pid}/");
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&work) {
            pids.insert(p);
        }
    }
    pids.remove(&(std::process::id() as i32));
    pids.into_iter().collect()
}

/// Removes what every killed run left; says what it removes.
pub fn reap() {
    for pid in dead_runs() {
        let work = format!("{WORK_PREFIX}{pid}");
        eprintln!("==> removing what a killed run (pid {pid}) left: its processes, namespace {NS_PREFIX}{pid}, {work}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_of(pid);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in left {
                // SAFETY: signalling a process of the dead run.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{NS_PREFIX}{pid}")])
            .output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{NS_PREFIX}{pid}"));
        detach_loops(&work);
        unmount_under(&work);
        let _ = std::fs::remove_dir_all(&work);
        let _ = Command::new("groupdel")
            .arg(format!("bgr-smoke-g{pid}"))
            .output();
    }
}

/// Detaches loop devices backed by files under `dir`.
fn detach_loops(dir: &str) {
    let list = Command::new("losetup")
        .arg("-a")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in list.lines().filter(|l| l.contains(dir)) {
        if let Some(dev) = line.split(':').next() {
            let _ = Command::new("losetup").args(["-d", dev]).output();
        }
    }
}

/// Unmounts what is mounted under `dir`, deepest first.
fn unmount_under(dir: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&format!("{dir}/")))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_with_a_pid_count() {
        assert_eq!(run_pid("banger-smoke-31351"), Some(31351));
        assert_eq!(run_pid("banger-smoke-"), None);
        assert_eq!(run_pid("banger-smoke-12x"), None);
        assert_eq!(run_pid("banger-smoke-1-2"), None);
        assert_eq!(run_pid("banger-dev"), None);
        assert_eq!(run_pid("xbanger-smoke-12"), None);
    }

    #[test]
    fn a_live_run_is_not_dead() {
        assert!(alive(std::process::id()));
        assert!(!dead_runs().contains(&std::process::id()));
    }
}
