//! SSH for a caller that is not root. The daemon's key and known_hosts are
//! root's, so a member of the `banger` group gets its own: a key pair the
//! CLI makes once (the daemon has each new VM of that user authorize its
//! public key) and a known_hosts the CLI keeps from the daemon's pinned host
//! keys, both in `$XDG_DATA_HOME/banger` (default `~/.local/share/banger`),
//! mode 0600 in a 0700 directory. Root uses the daemon's own files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use banger_api::{Request, SshInfo};

use crate::rpc;

/// True when this CLI runs as root (and so can use the daemon's files).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The caller's banger directory, made 0700 when missing.
fn data_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(
            std::env::var_os("HOME").context("HOME is not set; set it to your home directory")?,
        )
        .join(".local/share"),
    };
    let dir = base.join("banger");
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(dir)
}

fn key_path() -> anyhow::Result<PathBuf> {
    Ok(data_dir()?.join("id_ed25519"))
}

fn known_hosts_path() -> anyhow::Result<PathBuf> {
    Ok(data_dir()?.join("known_hosts"))
}

/// The path of the caller's ssh config block for `Host *.vm`.
fn ssh_config_path() -> anyhow::Result<PathBuf> {
    Ok(data_dir()?.join("ssh_config"))
}

/// The caller's public key, making the key pair on first use.
pub fn public_key() -> anyhow::Result<String> {
    let key = key_path()?;
    if !key.exists() {
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger-user", "-f"])
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .status()
            .context("running ssh-keygen (install openssh-client)")?;
        anyhow::ensure!(
            status.success(),
            "ssh-keygen failed making {}",
            key.display()
        );
    }
    let public = key.with_extension("pub");
    let text = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", public.display()))?;
    Ok(text.trim().to_string())
}

/// Writes the host keys of the caller's VMs, as the daemon pinned them.
pub fn refresh_known_hosts(socket: &Path) -> anyhow::Result<PathBuf> {
    let lines: Vec<String> = rpc::call(socket, &Request::KnownHosts)?;
    let path = known_hosts_path()?;
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if text.is_empty() {
        text.push_str("# no VMs yet\n");
    }
    write_private(&path, &text)?;
    Ok(path)
}

/// What OpenSSH needs for `info`'s VM, with the caller's own key and
/// known_hosts when not root.
pub fn local_ssh_info(socket: &Path, mut info: SshInfo) -> anyhow::Result<SshInfo> {
    if is_root() {
        return Ok(info);
    }
    public_key()?;
    info.identity_file = key_path()?.display().to_string();
    info.known_hosts = refresh_known_hosts(socket)?.display().to_string();
    Ok(info)
}

/// Writes the caller's `Host *.vm` block; returns its path and text.
pub fn write_ssh_config(socket: &Path) -> anyhow::Result<(PathBuf, String)> {
    public_key()?;
    let known = refresh_known_hosts(socket)?;
    let text = format!(
        "# banger: SSH to your VMs as NAME.vm. Written by `banger ssh-config`.\n\
         Host *.vm\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    \
         UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    LogLevel ERROR\n    KexAlgorithms {}\n",
        key_path()?.display(),
        known.display(),
        banger_api::types::KEX_FIRST
    );
    let path = ssh_config_path()?;
    write_private(&path, &text)?;
    Ok((path, text))
}

/// Replaces `path` with `text`, mode 0600.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
