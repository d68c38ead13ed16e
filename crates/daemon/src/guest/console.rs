//! The line a guest's sshd writes on the serial console once it listens,
//! and a watch for it in the VM's console log, so that a cold boot is not
//! polled over SSH while it is still on its way.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What the image's `ssh.service` writes on `/dev/console` once sshd
/// listens (`assets/ssh-banger.conf`).
pub const SSHD_LISTENS: &str = "banger: sshd listens";

/// How much of the log one look reads at most: a guest that floods its
/// console costs the daemon bounded work per look (and falls behind, so
/// that its line is found late and the daemon's periodic probe finds sshd).
const MAX_READ: u64 = 64 << 10;

/// Watches a console log for [`SSHD_LISTENS`] in what is written after
/// the watch began (an earlier boot's line does not count, unless the log
/// is cut meanwhile: its kept half is read again, which at worst tries SSH
/// early).
#[derive(Debug)]
pub struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    /// The end of what was read last, for a line split across two reads.
    carry: Vec<u8>,
    seen: bool,
}

impl ConsoleWatch {
    /// A watch of what is appended to `path` from now on.
    pub fn from_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        ConsoleWatch {
            path: path.to_path_buf(),
            offset,
            carry: Vec::new(),
            seen: false,
        }
    }

    /// Whether the line has appeared (once it has, always true). A log
    /// that shrank (cut to its last half by the daemon) is read again
    /// from its start.
    pub fn sshd_listens(&mut self) -> bool {
        if !self.seen {
            self.seen = self.look().unwrap_or(false);
        }
        self.seen
    }

    fn look(&mut self) -> std::io::Result<bool> {
        let mut f = std::fs::File::open(&self.path)?;
        let len = f.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.carry.clear();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        f.take(MAX_READ).read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(&fresh);
        let marker = SSHD_LISTENS.as_bytes();
        let found = window.windows(marker.len()).any(|w| w == marker);
        let keep = window.len().saturating_sub(marker.len() - 1);
        self.carry = window.split_off(keep);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn only_a_line_written_after_the_watch_began_counts() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        append(&log, format!("old boot\n{SSHD_LISTENS}\n").as_bytes());
        let mut watch = ConsoleWatch::from_end(&log);
        assert!(!watch.sshd_listens(), "an earlier boot's line counted");
        append(&log, b"[    1.0] Run /init as init process\n");
        assert!(!watch.sshd_listens());
        // Split across two looks, after a partial line of the boot's.
        append(&log, b"[  OK  ] Started ssh.service\x1b[0mbanger: ss");
        assert!(!watch.sshd_listens());
        append(&log, b"hd listens\n");
        assert!(watch.sshd_listens());
        assert!(watch.sshd_listens(), "seen stays seen");
    }

    #[test]
    fn a_missing_or_cut_log_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut watch = ConsoleWatch::from_end(&log);
        assert!(!watch.sshd_listens(), "no log yet");
        append(&log, &vec![b'x'; 4096]);
        assert!(!watch.sshd_listens());
        // The daemon keeps the log's last half, then the guest goes on.
        std::fs::write(&log, b"[banger: older console output dropped]\n").unwrap();
        append(&log, format!("{SSHD_LISTENS}\n").as_bytes());
        assert!(watch.sshd_listens());
    }
}
