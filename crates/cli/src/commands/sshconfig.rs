//! `banger ssh-config [--install|--uninstall]`: prints banger's `Host *.vm`
//! block, or adds/removes one `Include` line for it in `~/.ssh/config`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use banger_api::Request;
use clap::Args;

use crate::{rpc, useraccess};

#[derive(Args)]
pub struct SshConfigArgs {
    /// Add `Include <banger's config>` to ~/.ssh/config (idempotent).
    #[arg(long, conflicts_with = "uninstall")]
    install: bool,
    /// Remove exactly the line --install added.
    #[arg(long)]
    uninstall: bool,
    /// Print the block and where it is as JSON (`path`, `text`).
    #[arg(long, conflicts_with_all = ["install", "uninstall"])]
    json: bool,
}

pub fn run(args: SshConfigArgs, socket: &Path) -> anyhow::Result<i32> {
    // Root includes the daemon's own block; anyone else a block of their
    // own, with their key and their VMs' host keys.
    let (path, text) = if useraccess::is_root() {
        let v: serde_json::Value = rpc::call(socket, &Request::SshConfig)?;
        (
            v["path"].as_str().unwrap_or_default().to_string(),
            v["text"].as_str().unwrap_or_default().to_string(),
        )
    } else {
        let (path, text) = useraccess::write_ssh_config(socket)?;
        (path.display().to_string(), text)
    };
    let user_config = user_config_path()?;
    if args.install {
        let added = install(&user_config, &path)?;
        eprintln!(
            "{} {}",
            if added {
                "added an Include for banger to"
            } else {
                "banger is already included in"
            },
            user_config.display()
        );
    } else if args.uninstall {
        let removed = uninstall(&user_config, &path)?;
        eprintln!(
            "{} {}",
            if removed {
                "removed banger's Include from"
            } else {
                "no banger Include in"
            },
            user_config.display()
        );
    } else if args.json {
        crate::output::print_json(&serde_json::json!({ "path": path, "text": text }))?;
    } else {
        print!("{text}");
    }
    Ok(0)
}

fn user_config_path() -> anyhow::Result<PathBuf> {
    let home =
        std::env::var_os("HOME").context("HOME is not set; set it to your home directory")?;
    Ok(PathBuf::from(home).join(".ssh").join("config"))
}

fn include_line(banger_config: &str) -> String {
    format!("Include {banger_config}")
}

/// Adds the Include line at the top of the file, where OpenSSH applies it to
/// every host (an Include after a `Host` line would be scoped to it).
/// Returns false when it was already there.
pub fn install(user_config: &Path, banger_config: &str) -> anyhow::Result<bool> {
    let line = include_line(banger_config);
    let dir = user_config.parent().context("config path has no parent")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let old = match std::fs::read_to_string(user_config) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", user_config.display())),
    };
    if old.lines().any(|l| l.trim() == line) {
        return Ok(false);
    }
    let new = format!("{line}\n{old}");
    write_preserving_mode(user_config, &new)?;
    Ok(true)
}

/// Removes exactly the line `install` added. Returns false if absent.
pub fn uninstall(user_config: &Path, banger_config: &str) -> anyhow::Result<bool> {
    let line = format!("{}\n", include_line(banger_config));
    let old = match std::fs::read_to_string(user_config) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", user_config.display())),
    };
    let Some(at) = find_line(&old, &line) else {
        return Ok(false);
    };
    let new = format!("{}{}", &old[..at], &old[at + line.len()..]);
    write_preserving_mode(user_config, &new)?;
    Ok(true)
}

/// Byte offset of `line` where it is a whole line of `text`.
fn find_line(text: &str, line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(line) {
        let at = from + i;
        if at == 0 || text.as_bytes()[at - 1] == b'\n' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn write_preserving_mode(path: &Path, text: &str) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let tmp = path.with_extension("banger-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_prepends_once_and_uninstall_restores_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join(".ssh/config");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        let mine = "Host build\n  HostName 10.1.2.3\n# my notes, no trailing newline";
        std::fs::write(&cfg, mine).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(install(&cfg, "/var/lib/banger/ssh/config").unwrap());
        assert!(!install(&cfg, "/var/lib/banger/ssh/config").unwrap());
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.starts_with("Include /var/lib/banger/ssh/config\nHost build"));
        assert_eq!(text.matches("Include").count(), 1);
        assert!(uninstall(&cfg, "/var/lib/banger/ssh/config").unwrap());
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), mine);
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!uninstall(&cfg, "/var/lib/banger/ssh/config").unwrap());
    }

    #[test]
    fn install_creates_missing_dir_and_file_privately() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join(".ssh/config");
        assert!(install(&cfg, "/b/config").unwrap());
        assert_eq!(
            std::fs::read_to_string(&cfg).unwrap(),
            "Include /b/config\n"
        );
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(cfg.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }
}
