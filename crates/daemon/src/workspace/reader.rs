//! Whose rights a repo is read with. The daemon runs as root, but a caller
//! must only get into a guest (and so back in an export) what it could read
//! itself: `git` and `tar` run as the caller (`setpriv` with the caller's
//! uid, gid and supplementary groups). A root caller's repo is read as the
//! repo's owner, so `sudo banger workspace prepare` works on a user's repo
//! and no repo's own configuration ever runs as root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// The identity the repo is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    pub uid: u32,
    pub gid: u32,
}

impl Reader {
    /// The daemon's own identity (tests, and a daemon that is not root).
    pub fn daemon() -> Reader {
        // SAFETY: getuid and getgid have no preconditions.
        unsafe {
            Reader {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        }
    }

    /// Who reads `path` for a caller: the caller, or, for root, the owner
    /// of `path` (root when it cannot be looked at).
    pub fn for_caller(uid: u32, gid: u32, path: &Path) -> Reader {
        if uid != 0 {
            return Reader { uid, gid };
        }
        match std::fs::metadata(path) {
            Ok(m) => Reader {
                uid: m.uid(),
                gid: m.gid(),
            },
            Err(_) => Reader { uid, gid },
        }
    }

    /// `program` to run with this reader's rights, in a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let me = Reader::daemon();
        let mut cmd = if *self == me {
            Command::new(program)
        } else {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid));
            match passwd_entry(self.uid) {
                // Supplementary groups from /etc/group, as a login has.
                Some(_) => c.arg("--init-groups"),
                None => c.arg("--clear-groups"),
            };
            c.args(["--", program]);
            c
        };
        let home = passwd_entry(self.uid)
            .map(|(_, home)| home)
            .unwrap_or_else(|| "/".into());
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home)
            .env("LC_ALL", "C");
        cmd
    }
}

/// `(name, home)` of `uid` in /etc/passwd.
fn passwd_entry(uid: u32) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| (f[0].to_string(), f[5].to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_reads_as_itself_without_setpriv() {
        let me = Reader::daemon();
        let cmd = me.command("git");
        assert_eq!(cmd.get_program(), "git");
        let other = Reader {
            uid: me.uid + 4242,
            gid: me.gid + 4242,
        };
        let cmd = other.command("git");
        assert_eq!(cmd.get_program(), "setpriv");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.contains(&format!("--reuid={}", me.uid + 4242)),
            "{args:?}"
        );
        assert_eq!(
            args[args.len() - 2..],
            ["--".to_string(), "git".to_string()]
        );
    }

    #[test]
    fn a_non_root_caller_reads_as_itself_and_root_as_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Reader::for_caller(1000, 100, dir.path()),
            Reader {
                uid: 1000,
                gid: 100
            }
        );
        let owner = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(
            Reader::for_caller(0, 0, dir.path()),
            Reader {
                uid: owner.uid(),
                gid: owner.gid()
            }
        );
    }
}
