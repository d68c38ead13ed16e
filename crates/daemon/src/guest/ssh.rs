//! SSH: the daemon's client key, per-VM host keys pinned in a known_hosts
//! file the daemon owns, the OpenSSH argument vector, and readiness.

use crate::pathio::FromPathIo;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::GuestError;
use crate::cmd;
use crate::layout::{ensure_dir, Layout};

/// Marks our known_hosts lines so they can be found and removed per VM.
fn marker(name: &str) -> String {
    format!("banger-vm:{name}")
}

/// Creates the daemon's ed25519 client key if missing.
pub fn ensure_client_key(layout: &Layout) -> Result<(), GuestError> {
    let dir = layout.ssh_dir();
    ensure_dir(&dir, 0o700).map_err(|e| GuestError::io(&dir, e))?;
    let key = layout.client_key();
    if !key.exists() {
        generate_key(&key, "banger-client")?;
    }
    let kh = layout.known_hosts();
    if !kh.exists() {
        std::fs::write(&kh, "").map_err(|e| GuestError::io(&kh, e))?;
    }
    Ok(())
}

/// Generates an ed25519 key pair at `path` and `path.pub`.
pub fn generate_key(path: &Path, comment: &str) -> Result<(), GuestError> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    cmd::run(
        "ssh-keygen",
        &[
            "-q".as_ref(),
            "-t".as_ref(),
            "ed25519".as_ref(),
            "-N".as_ref(),
            "".as_ref(),
            "-C".as_ref(),
            comment.as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
        ] as &[&std::ffi::OsStr],
    )?;
    Ok(())
}

pub fn public_key(private: &Path) -> Result<String, GuestError> {
    let pub_path = pub_path(private);
    std::fs::read_to_string(&pub_path).map_err(|e| GuestError::io(&pub_path, e))
}

pub fn pub_path(private: &Path) -> PathBuf {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Pins `name`'s host key for its IP and `name.vm`, replacing older lines.
pub fn pin_host_key(
    layout: &Layout,
    name: &str,
    ip: &str,
    host_pub: &str,
) -> Result<(), GuestError> {
    let mut fields = host_pub.split_whitespace();
    let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
        return Err(GuestError::Failed(format!("malformed host key for {name}")));
    };
    let line = format!("{ip},{name}.vm {kind} {key} {}\n", marker(name));
    edit_known_hosts(layout, name, Some(&line))
}

/// `name`'s pinned known_hosts line, if it has one.
pub fn known_hosts_line(layout: &Layout, name: &str) -> Option<String> {
    let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let text = std::fs::read_to_string(layout.known_hosts()).ok()?;
    let mark = marker(name);
    text.lines()
        .find(|l| l.split_whitespace().nth(3) == Some(mark.as_str()))
        .map(str::to_string)
}

/// Removes `name`'s pinned host key; none is success.
pub fn unpin_host_key(layout: &Layout, name: &str) -> Result<(), GuestError> {
    edit_known_hosts(layout, name, None)
}

/// Serialises edits of known_hosts: concurrent creates and deletes must
/// not lose each other's lines.
static KNOWN_HOSTS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn edit_known_hosts(layout: &Layout, name: &str, add: Option<&str>) -> Result<(), GuestError> {
    let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = layout.known_hosts();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mark = marker(name);
    let mut new: String = old
        .lines()
        .filter(|l| l.split_whitespace().nth(3) != Some(mark.as_str()))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(line) = add {
        new.push_str(line);
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, new)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| GuestError::io(&path, e))
}

/// Options every banger SSH invocation uses: our key, our known_hosts,
/// strict host key checking, no agent or user config.
pub fn base_args(layout: &Layout) -> Vec<String> {
    banger_api::types::ssh_client_args(
        &layout.client_key().display().to_string(),
        &layout.known_hosts().display().to_string(),
    )
}

/// `ssh` to the guest at `ip`, running `command`, pipes ready.
fn ssh_command(layout: &Layout, ip: &str, command: &str, stdin: bool) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ssh");
    c.args(base_args(layout))
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        // A guest that stops answering is noticed within 20 s.
        .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=4"])
        .arg(format!("root@{ip}"))
        .arg(command)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Starts `ssh` and feeds it `stdin`.
async fn spawn(
    layout: &Layout,
    ip: &str,
    command: &str,
    stdin: Option<Vec<u8>>,
) -> Result<tokio::process::Child, GuestError> {
    let mut child = ssh_command(layout, ip, command, stdin.is_some())
        .spawn()
        .map_err(|e| GuestError::Failed(format!("running ssh: {e}")))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        pipe.write_all(&data)
            .await
            .map_err(|e| GuestError::Failed(format!("writing to ssh: {e}")))?;
    }
    Ok(child)
}

/// The most of a command's stdout `exec` keeps: a guest that sends more
/// (it could send without end) ends the command with an error. Large
/// answers stream ([`exec_stream`]).
pub const STDOUT_CAP: usize = 8 << 20;

/// Runs `command` in the guest as root and returns its output (stdout at
/// most [`STDOUT_CAP`], the end of stderr).
pub async fn exec(
    layout: &Layout,
    ip: &str,
    command: &str,
    stdin: Option<Vec<u8>>,
) -> Result<std::process::Output, GuestError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let run = exec_stream(layout, ip, command, stdin, tx, 64 << 10);
    let collect = async {
        let mut stdout = Vec::new();
        while let Some(chunk) = rx.recv().await {
            if stdout.len() + chunk.len() > STDOUT_CAP {
                // Dropping `rx` makes `run` stop and kill ssh.
                return Err(GuestError::Failed(format!(
                    "the guest answered `{}` with more than {} MiB",
                    command.split_whitespace().next().unwrap_or(command),
                    STDOUT_CAP >> 20
                )));
            }
            stdout.extend_from_slice(&chunk);
        }
        Ok(stdout)
    };
    let (ended, stdout) = tokio::join!(run, collect);
    let stdout = stdout?;
    let (status, stderr) = ended?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// The most of a command's stderr kept (its last lines say why it failed).
const STDERR_KEEP: usize = 64 << 10;

/// Runs `command` in the guest as root, sending its stdout to `out` in
/// chunks of at most `chunk` bytes as they come (waiting while `out` is
/// full); returns its exit status and the end of its stderr. Nothing is
/// held whole.
pub async fn exec_stream(
    layout: &Layout,
    ip: &str,
    command: &str,
    stdin: Option<Vec<u8>>,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    chunk: usize,
) -> Result<(std::process::ExitStatus, Vec<u8>), GuestError> {
    use tokio::io::AsyncReadExt;
    let mut child = spawn(layout, ip, command, stdin).await?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(GuestError::Failed("ssh without pipes".into()));
    };
    let errors = tokio::spawn(stderr_tail(stderr));
    let mut buf = vec![0u8; chunk];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| GuestError::Failed(format!("reading from ssh: {e}")))?;
        if n == 0 {
            break;
        }
        if out.send(buf[..n].to_vec()).await.is_err() {
            return Err(GuestError::Failed(
                "the client left during the transfer".into(),
            ));
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| GuestError::Failed(format!("waiting for ssh: {e}")))?;
    Ok((status, errors.await.unwrap_or_default()))
}

/// Runs `command` in the guest as root with its stdin fed from `input`
/// chunk by chunk until `input` closes (an upload, never held whole);
/// returns its output (stdout at most [`STDOUT_CAP`], the end of stderr).
/// Once the command exits, `input` is dropped: a sender then learns that
/// the guest stopped reading.
pub async fn exec_feed(
    layout: &Layout,
    ip: &str,
    command: &str,
    mut input: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<std::process::Output, GuestError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut child = ssh_command(layout, ip, command, true)
        .spawn()
        .map_err(|e| GuestError::Failed(format!("running ssh: {e}")))?;
    let (Some(mut pipe), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(GuestError::Failed("ssh without pipes".into()));
    };
    let feed = tokio::spawn(async move {
        while let Some(chunk) = input.recv().await {
            if pipe.write_all(&chunk).await.is_err() {
                break; // the command stopped reading; its status says why
            }
        }
        // Dropping the pipe closes the command's stdin.
    });
    let out = async {
        let mut kept = Vec::new();
        let _ = stdout.take(STDOUT_CAP as u64).read_to_end(&mut kept).await;
        kept
    };
    let (stdout, stderr, status) = tokio::join!(out, stderr_tail(stderr), child.wait());
    feed.abort();
    let status = status.map_err(|e| GuestError::Failed(format!("waiting for ssh: {e}")))?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads `from` to its end, keeping the last [`STDERR_KEEP`] bytes.
async fn stderr_tail(mut from: tokio::process::ChildStderr) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_KEEP {
            kept.drain(..kept.len() - STDERR_KEEP);
        }
    }
    kept
}

/// Writes the `Host *.vm` block that `ssh-config` prints and installs.
pub fn write_ssh_config(layout: &Layout) -> Result<PathBuf, GuestError> {
    let path = layout.ssh_config();
    let text = ssh_config_text(layout);
    let mut f = std::fs::File::create(&path).map_err(|e| GuestError::io(&path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| GuestError::io(&path, e))?;
    Ok(path)
}

pub fn ssh_config_text(layout: &Layout) -> String {
    format!(
        "# banger: SSH to VMs as NAME.vm. Managed by the banger daemon.\n\
         Host *.vm\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    \
         UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    LogLevel ERROR\n    KexAlgorithms {}\n",
        layout.client_key().display(),
        layout.known_hosts().display(),
        banger_api::types::KEX_FIRST
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_pins_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().into(), dir.path().join("run"), None);
        std::fs::create_dir_all(layout.ssh_dir()).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let layout = layout.clone();
                std::thread::spawn(move || {
                    pin_host_key(
                        &layout,
                        &format!("vm{i}"),
                        &format!("10.0.0.{i}"),
                        "ssh-ed25519 AAAAx k",
                    )
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let kh = std::fs::read_to_string(layout.known_hosts()).unwrap();
        assert_eq!(kh.lines().count(), 16, "{kh}");
    }

    #[test]
    fn known_hosts_lines_are_pinned_and_removed_per_vm() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().into(), dir.path().join("run"), None);
        std::fs::create_dir_all(layout.ssh_dir()).unwrap();
        std::fs::write(layout.known_hosts(), "other.example ssh-ed25519 AAAAkeep\n").unwrap();
        pin_host_key(&layout, "a", "10.0.0.2", "ssh-ed25519 AAAAa a\n").unwrap();
        pin_host_key(&layout, "ab", "10.0.0.3", "ssh-ed25519 AAAAb ab\n").unwrap();
        pin_host_key(&layout, "a", "10.0.0.2", "ssh-ed25519 AAAAc a\n").unwrap();
        let kh = std::fs::read_to_string(layout.known_hosts()).unwrap();
        assert_eq!(kh.matches("banger-vm:a\n").count(), 1, "{kh}");
        assert!(kh.contains("10.0.0.2,a.vm ssh-ed25519 AAAAc"));
        unpin_host_key(&layout, "a").unwrap();
        let kh = std::fs::read_to_string(layout.known_hosts()).unwrap();
        assert_eq!(
            kh,
            "other.example ssh-ed25519 AAAAkeep\n10.0.0.3,ab.vm ssh-ed25519 AAAAb banger-vm:ab\n"
        );
    }
}
