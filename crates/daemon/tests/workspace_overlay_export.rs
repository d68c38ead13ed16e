//! The export of an overlay workspace, on a real overlayfs on the host (as
//! root; skipped with the reason otherwise): the repo is staged as
//! `prepare` stages the image, mounted as the guest mounts it, changed in
//! every way, and exported with the guest's own script. The export looks
//! only at what the overlay's upper layer, the host and the guest's index
//! changed; it must give exactly the patch of a scan of every file, and
//! that patch, applied at the base, must give exactly the guest's tree.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bangerd::workspace::reader::Reader;
use bangerd::workspace::{image, pack, scripts};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, rel: &str, body: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// Tree id of the work tree as git would commit it, every file read.
fn tree_of(dir: &Path) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let idx = scratch.path().join("index");
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_INDEX_FILE", &idx)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["add", "--all", "."]);
    run(&["write-tree"])
}

/// A workspace as the guest has it: `ws/lower` staged by `image::stage`,
/// an overlay of `ws/lower/repo` and `ws/upper` mounted at `repo`.
struct Workspace {
    dir: tempfile::TempDir,
    host: PathBuf,
    ws: PathBuf,
    repo: PathBuf,
    base: String,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.repo).status();
    }
}

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting an overlay needs root");
        return false;
    }
    true
}

/// The host repo: files in directories, an ignored pattern with a tracked
/// file under it, a symlink, a script, a binary file; then uncommitted
/// edits, a deletion and an untracked file on the host.
fn host_repo(dir: &Path, files: usize) -> (PathBuf, String) {
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    git(&host, &["init", "-q", "-b", "main"]);
    for i in 0..files {
        write(
            &host,
            &format!("src/d{}/f{i}.txt", i % 7),
            format!("file {i}\n").as_bytes(),
        );
    }
    write(&host, ".gitignore", b"*.log\nbuild/\n");
    write(&host, "build/keep", b"tracked although ignored\n");
    write(&host, "dir with space/\u{00fc} file", b"x\n");
    write(&host, "run.sh", b"#!/bin/sh\n");
    write(
        &host,
        "bin.dat",
        &(0u8..=255).cycle().take(3000).collect::<Vec<_>>(),
    );
    symlink("src", host.join("link")).unwrap();
    git(&host, &["add", "-A"]);
    git(&host, &["add", "-f", "build/keep"]);
    git(&host, &["commit", "-q", "-m", "base"]);
    let base = git(&host, &["rev-parse", "HEAD"]).trim().to_string();
    write(&host, "src/d1/f1.txt", b"edited on the host\n");
    std::fs::remove_file(host.join("src/d2/f2.txt")).unwrap();
    write(&host, "untracked.txt", b"new on the host\n");
    write(&host, "host.log", b"ignored\n");
    (host, base)
}

fn workspace(files: usize, include_ignored: bool) -> Option<Workspace> {
    if !privileged() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (host, base) = host_repo(dir.path(), files);
    let ws = dir.path().join("ws");
    let lower = ws.join("lower");
    for d in [&lower, &ws.join("upper"), &ws.join("work")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let repo_h = pack::open(&host, Reader::daemon()).unwrap();
    let list = pack::file_list(&repo_h, include_ignored).unwrap();
    image::stage(&repo_h, &list, false, include_ignored, &lower).unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join("repo").display(),
        ws.join("upper").display(),
        ws.join("work").display()
    );
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&repo)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "skipped: cannot mount an overlay here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return None;
    }
    Some(Workspace {
        dir,
        host,
        ws,
        repo,
        base,
    })
}

fn export(w: &Workspace, base: Option<&str>, full: bool) -> Output {
    Command::new("sh")
        .args(["-c", scripts::EXPORT, "export", base.unwrap_or("")])
        .env("BANGER_REPO", &w.repo)
        .env("BANGER_WS", &w.ws)
        .env("BANGER_EXPORT_SCAN", if full { "full" } else { "" })
        .output()
        .unwrap()
}

/// Exports both ways, checks they agree and that the patch applied at the
/// base gives the guest's tree; returns what the export said it looked at.
fn check(w: &Workspace, base: Option<&str>) -> String {
    let index_before = std::fs::read(w.repo.join(".git/index")).ok();
    let fast = export(w, base, false);
    assert!(
        fast.status.success(),
        "{}",
        String::from_utf8_lossy(&fast.stderr)
    );
    let full = export(w, base, true);
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let said = String::from_utf8_lossy(&fast.stderr).trim().to_string();
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("every file"),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&fast.stdout),
        String::from_utf8_lossy(&full.stdout),
        "the export that looks at the changes differs from the one that scans ({said})"
    );
    assert_eq!(
        std::fs::read(w.repo.join(".git/index")).ok(),
        index_before,
        "export changed the guest's index"
    );
    // Apply to a clone of the guest's repo at the base.
    let clone = w.dir.path().join("clone");
    let _ = std::fs::remove_dir_all(&clone);
    let out = Command::new("git")
        .args(["clone", "-q", "--no-checkout"])
        .arg(&w.repo)
        .arg(&clone)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = base
        .map(str::to_string)
        .unwrap_or_else(|| git(&w.repo, &["rev-parse", "HEAD"]).trim().to_string());
    git(&clone, &["checkout", "-q", "--force", &at]);
    if !fast.stdout.is_empty() {
        let p = w.dir.path().join("work.patch");
        std::fs::write(&p, &fast.stdout).unwrap();
        git(&clone, &["apply", "--binary", p.to_str().unwrap()]);
    }
    // Ignored files are not exported: leave them out of the comparison.
    let guest_tree = tree_of(&w.repo);
    assert_eq!(
        tree_of(&clone),
        guest_tree,
        "the patch does not give the guest's tree ({said})"
    );
    said
}

fn fast_path(said: &str) -> bool {
    said.contains("looked at") && !said.contains("every file")
}

#[test]
fn every_kind_of_change_exports_exactly() {
    let Some(w) = workspace(40, false) else {
        return;
    };
    let r = &w.repo;
    // Nothing changed in the guest: the host's uncommitted state alone.
    let said = check(&w, None);
    assert!(fast_path(&said), "{said}");

    write(r, "src/d3/f3.txt", b"edited in the guest\n");
    std::fs::remove_file(r.join("src/d4/f4.txt")).unwrap();
    std::fs::set_permissions(r.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(r.join("src/d5/f5.txt"), r.join("src/d5/renamed.txt")).unwrap();
    // A whole directory of the image deleted; another deleted and made again.
    std::fs::remove_dir_all(r.join("src/d6")).unwrap();
    std::fs::remove_dir_all(r.join("src/d0")).unwrap();
    write(r, "src/d0/reborn.txt", b"new content\n");
    // A directory of the image renamed (copied and deleted by mv).
    let mv = Command::new("mv")
        .arg(r.join("dir with space"))
        .arg(r.join("moved dir"))
        .status()
        .unwrap();
    assert!(mv.success());
    // Names git must not take as patterns or magic.
    write(r, "star*.txt", b"*\n");
    write(r, ":colon", b":\n");
    write(r, "new dir/deeper/q.txt", b"q\n");
    write(r, "new dir/deeper/skip.log", b"ignored\n");
    write(r, "build/other", b"untracked in an ignored directory\n");
    write(
        r,
        "build/keep",
        b"tracked file under an ignored pattern, edited\n",
    );
    std::fs::remove_file(r.join("link")).unwrap();
    symlink("run.sh", r.join("link")).unwrap();
    std::fs::remove_file(r.join("untracked.txt")).unwrap();
    let mut bin = std::fs::read(r.join("bin.dat")).unwrap();
    bin[7] ^= 0xff;
    std::fs::write(r.join("bin.dat"), bin).unwrap();
    // A file that becomes a directory, and a directory that becomes a file.
    std::fs::remove_file(r.join("src/d1/f8.txt")).unwrap();
    write(r, "src/d1/f8.txt/inner.txt", b"inner\n");
    std::fs::remove_dir_all(r.join("src/d2")).unwrap();
    write(r, "src/d2", b"now a file\n");
    let said = check(&w, None);
    assert!(fast_path(&said), "{said}");

    // The guest's own git: a commit, an untracked file taken out of the
    // index, an ignored file forced in; plain and --base-commit exports.
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "guest"]);
    write(r, "src/d3/f10.txt", b"after the guest's commit\n");
    git(r, &["rm", "-q", "--cached", "src/d3/f17.txt"]);
    write(r, "forced.log", b"forced\n");
    git(r, &["add", "-f", "forced.log"]);
    let said = check(&w, None);
    assert!(fast_path(&said), "{said}");
    let said = check(&w, Some(&w.base));
    assert!(fast_path(&said), "{said}");
    // A soft reset moves HEAD back: the commit's changes are uncommitted again.
    git(r, &["reset", "-q", "--soft", "HEAD~1"]);
    check(&w, None);
    // A .gitignore that no longer ignores *.log.
    write(r, ".gitignore", b"build/\n");
    check(&w, Some(&w.base));
    // The host repo was never touched.
    assert_eq!(git(&w.host, &["rev-parse", "HEAD"]).trim(), w.base);
}

#[test]
fn ignored_files_packed_on_request_export_as_a_scan_would() {
    let Some(w) = workspace(10, true) else { return };
    // host.log is in the image; the guest stops ignoring it.
    assert!(w.repo.join("host.log").exists());
    let said = check(&w, None);
    assert!(fast_path(&said), "{said}");
    write(&w.repo, ".gitignore", b"build/\n");
    let said = check(&w, None);
    assert!(fast_path(&said), "{said}");
}

#[test]
fn many_changes_and_lost_indexes_fall_back_to_a_scan() {
    let Some(w) = workspace(20, false) else {
        return;
    };
    for i in 0..1200 {
        write(&w.repo, &format!("many/m{i}.txt"), b"m\n");
    }
    // One new directory: looked at as one path, its files listed by git.
    let said = check(&w, None);
    assert!(fast_path(&said), "{said}");
    // More new directories than pathspecs git matches quickly.
    for i in 0..1001 {
        write(&w.repo, &format!("src/d{}/n{i}/n.txt", i % 7), b"n\n");
    }
    let said = check(&w, None);
    assert!(said.contains("every file"), "{said}");
    // No index in the guest at all.
    std::fs::remove_file(w.repo.join(".git/index")).unwrap();
    check(&w, None);
}

/// Random changes, checked after each round against a scan and the tree.
#[test]
fn random_changes_export_exactly() {
    let Some(w) = workspace(60, false) else {
        return;
    };
    let r = &w.repo;
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for round in 0..6 {
        for step in 0..12 {
            let d = format!("src/d{}", next(9));
            let f = format!("{d}/f{}.txt", next(70));
            let p = r.join(&f);
            match next(10) {
                0 | 1 => write(r, &f, format!("round {round} step {step}\n").as_bytes()),
                2 => {
                    let _ = std::fs::remove_file(&p);
                }
                3 => {
                    if p.is_file() {
                        let mode = if next(2) == 0 { 0o755 } else { 0o644 };
                        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                            .unwrap();
                    }
                }
                4 => {
                    let _ = std::fs::remove_dir_all(r.join(&d));
                }
                5 => {
                    let _ = std::fs::remove_dir_all(r.join(&d));
                    write(r, &format!("{d}/again{round}.txt"), b"again\n");
                }
                6 => {
                    if p.is_file() {
                        let _ = std::fs::rename(&p, r.join(format!("{f}.moved")));
                    }
                }
                7 => write(r, &format!("{d}/x{step}.log"), b"ignored\n"),
                8 => {
                    let _ = Command::new("git")
                        .arg("-C")
                        .arg(r)
                        .args([
                            "-c",
                            "user.name=t",
                            "-c",
                            "user.email=t@t",
                            "commit",
                            "-qam",
                            "step",
                        ])
                        .output();
                }
                _ => {
                    let _ = Command::new("git")
                        .arg("-C")
                        .arg(r)
                        .args(["add", "-A"])
                        .output();
                }
            }
        }
        let said = check(&w, None);
        assert!(fast_path(&said), "round {round}: {said}");
        if round % 2 == 1 {
            check(&w, Some(&w.base));
        }
    }
}
