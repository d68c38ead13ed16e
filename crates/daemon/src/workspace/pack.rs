//! Host side: validate the repo, and pack `.git` plus the working tree as it
//! stands (tracked and untracked files, uncommitted edits; ignored files
//! only on request) into a tar, and for overlay mode into an ext4 image.
//! The host repo is only read, with the caller's rights ([`Reader`]): no
//! git command here writes its index, and git runs with hooks and
//! fsmonitor off.

use crate::pathio::FromPathIo;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::reader::Reader;
use super::WorkspaceError;
use crate::cmd;

/// A repo checked to be a git work tree.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The work tree's top level.
    pub root: PathBuf,
    /// `HEAD`'s commit, or `None` in a repo without commits.
    pub head: Option<String>,
    /// Whose rights the repo is read with.
    pub reader: Reader,
}

/// Runs `program args` as `reader`; stdout on success.
fn run_as(reader: Reader, program: &str, args: &[&str]) -> Result<Vec<u8>, cmd::CmdError> {
    let out = reader
        .command(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| cmd::spawn_error(program, &[], e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(cmd::CmdError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: stderr.trim().lines().last().unwrap_or("").to_string(),
        });
    }
    Ok(out.stdout)
}

/// `git -C DIR ARGS` as `reader`, with nothing of the repo's own
/// configuration that runs programs.
fn git(reader: Reader, dir: &Path, args: &[&str]) -> Result<Vec<u8>, cmd::CmdError> {
    let dir = dir.display().to_string();
    let mut full = vec![
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-C",
        &dir,
    ];
    full.extend_from_slice(args);
    run_as(reader, "git", &full)
}

/// Checks `path` is inside a git work tree `reader` can read, and finds its
/// top level.
pub fn open(path: &Path, reader: Reader) -> Result<Repo, WorkspaceError> {
    let top = git(reader, path, &["rev-parse", "--show-toplevel"]).map_err(|_| {
        WorkspaceError::Invalid(format!(
            "{} is not a git repository that you can read; run `git init` there or pass another --repo",
            path.display()
        ))
    })?;
    let root = PathBuf::from(String::from_utf8_lossy(&top).trim());
    let head = git(reader, &root, &["rev-parse", "--verify", "--quiet", "HEAD"])
        .ok()
        .map(|s| String::from_utf8_lossy(&s).trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(Repo { root, head, reader })
}

/// Paths to pack, relative to the root, NUL-separated for tar `-T`: `.git`
/// and every tracked or untracked file that exists (ignored ones too with
/// `include_ignored`).
pub fn file_list(repo: &Repo, include_ignored: bool) -> Result<Vec<u8>, WorkspaceError> {
    let mut args = vec!["ls-files", "-z", "--cached", "--others"];
    if !include_ignored {
        args.push("--exclude-standard");
    }
    let out = git(repo.reader, &repo.root, &args)?;
    let mut list = b".git\0".to_vec();
    let mut seen = std::collections::HashSet::new();
    for name in out.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::ffi::OsStr::from_bytes(name));
        // Tracked files deleted in the work tree are left out; so are
        // submodule entries listed twice.
        if repo.root.join(rel).symlink_metadata().is_ok() && seen.insert(name.to_vec()) {
            list.extend_from_slice(name);
            list.push(0);
        }
    }
    Ok(list)
}

/// Writes a tar of the listed paths at `dest`, owned by root; with
/// `readonly`, every write bit is dropped. `tar` runs as the repo's reader
/// and writes to a file the daemon opened: it reads only what the reader
/// may, and a file it cannot read fails the whole pack.
pub fn tar(repo: &Repo, list: &[u8], readonly: bool, dest: &Path) -> Result<(), WorkspaceError> {
    let list_path = dest.with_extension("list");
    private_file(&list_path)
        .and_then(|mut f| f.write_all(list))
        .map_err(|e| WorkspaceError::io(&list_path, e))?;
    let result = tar_into(repo, &list_path, readonly, dest);
    let _ = std::fs::remove_file(&list_path);
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn tar_into(repo: &Repo, list: &Path, readonly: bool, dest: &Path) -> Result<(), WorkspaceError> {
    let names = std::fs::File::open(list).map_err(|e| WorkspaceError::io(list, e))?;
    let out = private_file(dest).map_err(|e| WorkspaceError::io(dest, e))?;
    let root = repo.root.display().to_string();
    let mut args = vec![
        "--create",
        "--file=-",
        "--directory",
        &root,
        "--owner=root",
        "--group=root",
        "--numeric-owner",
    ];
    // No set-id bit survives the pack: the tree is extracted as root on
    // the host (overlay mode) before it becomes an image.
    args.push(if readonly {
        "--mode=a-w,ug-s"
    } else {
        "--mode=ug-s"
    });
    args.extend(["--null", "--files-from=-"]);
    let done = repo
        .reader
        .command("tar")
        .args(&args)
        .stdin(names)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| cmd::spawn_error("tar", &[], e))?;
    if !done.status.success() {
        let stderr = String::from_utf8_lossy(&done.stderr);
        let why = stderr.trim().lines().next().unwrap_or("").to_string();
        return Err(WorkspaceError::Invalid(format!(
            "cannot pack {}: {why}; every file in the repo must be readable by you",
            repo.root.display()
        )));
    }
    Ok(())
}

/// The directory inside a workspace image that holds the repo (the image's
/// root also holds mkfs's `lost+found`).
pub const IMAGE_REPO_DIR: &str = "repo";

/// Builds a read-only ext4 image from a tar (extracted into a staging
/// directory beside `dest`, then `mkfs.ext4 -d`), with an inode for every
/// entry and room for metadata. The repo is under [`IMAGE_REPO_DIR`].
pub fn ext4_from_tar(
    tar_path: &Path,
    entries: usize,
    readonly: bool,
    dest: &Path,
) -> Result<(), WorkspaceError> {
    let staging = dest.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    let repo_dir = staging.join(IMAGE_REPO_DIR);
    // Root's alone: the caller's files lie here, extracted as root.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&repo_dir)
        .map_err(|e| WorkspaceError::io(&staging, e))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| WorkspaceError::io(&staging, e))?;
    // The repo itself as the guest knows it; only root reaches it here.
    std::fs::set_permissions(&repo_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| WorkspaceError::io(&repo_dir, e))?;
    let result = (|| {
        cmd::run(
            "tar",
            &[
                "--extract".as_ref(),
                "--same-permissions".as_ref(),
                "--file".as_ref(),
                tar_path.as_os_str(),
                "--directory".as_ref(),
                repo_dir.as_os_str(),
            ] as &[&std::ffi::OsStr],
        )?;
        if readonly {
            drop_write_bits(&repo_dir)?;
        }
        let (bytes, files) = tree_usage(&staging);
        let files = files.max(entries) as u64;
        // Each file takes at least one 4 KiB block and one inode.
        let size_mib = (bytes + files * 4096) / (1 << 20) * 5 / 4 + 32;
        let inodes = (files + 1024).to_string();
        crate::ext4::make(
            &staging,
            dest,
            "banger-ws",
            &format!("{size_mib}M"),
            &["-N", &inodes],
        )?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| WorkspaceError::io(dest, e))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Creates `path` (which must not exist) for root alone.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Removes every write bit under `dir` and from `dir` itself, directories
/// included (tar creates parents it was not given with default modes).
pub fn drop_write_bits(dir: &Path) -> Result<(), WorkspaceError> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| WorkspaceError::io(&d, e))?;
        for e in entries.flatten() {
            let meta = e
                .metadata()
                .map_err(|err| WorkspaceError::io(&e.path(), err))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let mode = meta.permissions().mode() & !0o222;
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))
                    .map_err(|err| WorkspaceError::io(&e.path(), err))?;
            }
        }
        dirs.push(d);
    }
    for d in dirs.into_iter().rev() {
        let mode = std::fs::metadata(&d)
            .map_err(|e| WorkspaceError::io(&d, e))?
            .permissions()
            .mode()
            & !0o222;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
            .map_err(|e| WorkspaceError::io(&d, e))?;
    }
    Ok(())
}

/// Bytes and entries under `dir` (not following symlinks).
fn tree_usage(dir: &Path) -> (u64, usize) {
    let (mut bytes, mut count) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            count += 1;
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => bytes += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    (bytes, count)
}
