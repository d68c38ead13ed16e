//! Host side: validate the repo, and pack `.git` plus the working tree as it
//! stands (tracked and untracked files, uncommitted edits; ignored files
//! only on request) into a tar (full_copy mode), or copy it into a
//! directory that becomes an ext4 image (overlay mode, [`super::image`]).
//! The host repo is only read, with the caller's rights ([`Reader`]): no
//! git command here writes its index, and git runs with hooks and
//! fsmonitor off.

use crate::pathio::FromPathIo;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
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
    let done = repo
        .reader
        .command("tar")
        .args(create_args(repo, readonly))
        .stdin(names)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| cmd::spawn_error("tar", &[], e))?;
    if !done.status.success() {
        return Err(unreadable(repo, &done.stderr));
    }
    Ok(())
}

/// `tar --create` of the paths on stdin, relative to the repo's root, to
/// stdout, owned by root, without set-id bits (the tree is extracted as
/// root on the host in overlay mode) and, with `readonly`, write bits.
fn create_args(repo: &Repo, readonly: bool) -> Vec<String> {
    let mode = if readonly {
        "--mode=a-w,ug-s"
    } else {
        "--mode=ug-s"
    };
    let root = repo.root.display().to_string();
    [
        "--create",
        "--file=-",
        "--directory",
        &root,
        "--owner=root",
        "--group=root",
        "--numeric-owner",
        mode,
        "--null",
        "--files-from=-",
    ]
    .map(String::from)
    .to_vec()
}

/// The error for a `tar --create` that failed: a file the reader cannot read.
fn unreadable(repo: &Repo, stderr: &[u8]) -> WorkspaceError {
    let stderr = String::from_utf8_lossy(stderr);
    let why = stderr.trim().lines().next().unwrap_or("").to_string();
    WorkspaceError::Invalid(format!(
        "cannot pack {}: {why}; every file in the repo must be readable by you",
        repo.root.display()
    ))
}

/// Copies the listed paths into `dir` as [`tar`] would pack them, with no
/// archive in between: `tar --create` as the repo's reader piped into
/// `tar --extract` as root.
pub fn unpack_into(
    repo: &Repo,
    list: &[u8],
    readonly: bool,
    dir: &Path,
) -> Result<(), WorkspaceError> {
    use std::io::Read;
    use std::process::Stdio;
    // The names go in through a pipe of our own, written as tar reads them.
    let mut create = repo
        .reader
        .command("tar")
        .args(create_args(repo, readonly))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cmd::spawn_error("tar", &[], e))?;
    let (Some(mut names), Some(archive), Some(mut errors)) = (
        create.stdin.take(),
        create.stdout.take(),
        create.stderr.take(),
    ) else {
        let _ = create.kill();
        let _ = create.wait();
        return Err(WorkspaceError::Failed("tar without pipes".into()));
    };
    let list = list.to_vec();
    let feeder = std::thread::spawn(move || names.write_all(&list));
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = errors.read_to_end(&mut text);
        text
    });
    let extracted = std::process::Command::new("tar")
        .args(["--extract", "--same-permissions", "--file=-", "--directory"])
        .arg(dir)
        .stdin(archive)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| cmd::spawn_error("tar", &[], e));
    let created = create.wait().map_err(|e| cmd::spawn_error("tar", &[], e))?;
    let _ = feeder.join();
    let create_stderr = reader.join().unwrap_or_default();
    // A failed extract breaks the pipe and fails the create too: it speaks first.
    let extracted = extracted?;
    if !extracted.status.success() {
        let stderr = String::from_utf8_lossy(&extracted.stderr);
        return Err(WorkspaceError::Failed(format!(
            "unpacking {} into {}: {}",
            repo.root.display(),
            dir.display(),
            stderr.trim().lines().next().unwrap_or("")
        )));
    }
    if !created.success() {
        return Err(unreadable(repo, &create_stderr));
    }
    Ok(())
}

/// Paths (NUL-separated, relative to the root) whose files may differ from
/// the index: tracked files whose stat data or content differ from it (or
/// that are gone), and untracked files (ignored ones too with
/// `include_ignored`, as [`file_list`] packs them). The index is read,
/// never written.
pub fn changed(repo: &Repo, include_ignored: bool) -> Result<Vec<u8>, WorkspaceError> {
    let mut out = git(
        repo.reader,
        &repo.root,
        &["diff-files", "-z", "--name-only"],
    )?;
    let mut args = vec!["ls-files", "-z", "--others"];
    if !include_ignored {
        args.push("--exclude-standard");
    }
    out.extend(git(repo.reader, &repo.root, &args)?);
    Ok(out)
}

/// Bytes and entries of the listed paths (directories' contents included,
/// so `.git` counts whole), each file rounded up to a 4 KiB block.
pub fn listed_usage(repo: &Repo, list: &[u8]) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let path = repo.root.join(std::ffi::OsStr::from_bytes(name));
        match path.symlink_metadata() {
            Ok(m) if m.is_dir() => {
                let (b, n) = tree_usage(&path);
                bytes += b + n as u64 * 4096;
                entries += n as u64 + 1;
            }
            Ok(m) => {
                bytes += m.len().div_ceil(4096) * 4096;
                entries += 1;
            }
            Err(_) => {}
        }
    }
    (bytes, entries)
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
pub(super) fn tree_usage(dir: &Path) -> (u64, usize) {
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
