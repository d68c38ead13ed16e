//! Workspace packing and export with real git and tar, no VM: the repo is
//! packed as `prepare` packs it, unpacked into a stand-in for the guest's
//! /root/repo, changed in every way a patch must carry, exported with the
//! guest's own export script, and applied to the host repo at the base.
//! The trees must then be identical.

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
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
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

/// Tree id of the work tree as git would commit it (via a scratch index).
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

fn export(guest: &Path, base: Option<&str>) -> Output {
    Command::new("sh")
        .args(["-c", scripts::EXPORT, "export", base.unwrap_or("")])
        .env("BANGER_REPO", guest)
        .output()
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    host: PathBuf,
    guest: PathBuf,
    base: String,
}

fn fixture(readonly: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host repo");
    std::fs::create_dir_all(&host).unwrap();
    git(&host, &["init", "-q", "-b", "main"]);
    write(&host, "a.txt", b"alpha\n");
    write(&host, "b.txt", b"bravo\n");
    write(
        &host,
        "c.txt",
        b"charlie is long enough to be detected as a rename\n"
            .repeat(5)
            .as_slice(),
    );
    write(
        &host,
        "bin.dat",
        &(0u8..=255).cycle().take(3000).collect::<Vec<_>>(),
    );
    write(&host, "run.sh", b"#!/bin/sh\necho hi\n");
    write(&host, ".gitignore", b"*.log\n");
    symlink("a.txt", host.join("link")).unwrap();
    git(&host, &["add", "-A"]);
    git(&host, &["commit", "-q", "-m", "base"]);
    let base = git(&host, &["rev-parse", "HEAD"]).trim().to_string();
    // Uncommitted state the guest must see too.
    write(&host, "a.txt", b"alpha, edited on the host\n");
    write(&host, "untracked.txt", b"new on the host\n");
    write(&host, "build.log", b"ignored\n");

    let index_before = std::fs::read(host.join(".git/index")).unwrap();
    let mtime_before = std::fs::metadata(host.join(".git/index"))
        .unwrap()
        .modified()
        .unwrap();
    let repo = pack::open(&host, Reader::daemon()).unwrap();
    assert_eq!(repo.head.as_deref(), Some(base.as_str()));
    let list = pack::file_list(&repo, false).unwrap();
    let names = String::from_utf8_lossy(&list).replace('\0', " ");
    assert!(
        names.contains("untracked.txt") && !names.contains("build.log"),
        "{names}"
    );
    let tar = dir.path().join("ws.tar");
    pack::tar(&repo, &list, readonly, &tar).unwrap();
    let guest = dir.path().join("guest").join("repo");
    std::fs::create_dir_all(&guest).unwrap();
    let out = Command::new("tar")
        .arg("-xpf")
        .arg(&tar)
        .arg("-C")
        .arg(&guest)
        .output()
        .unwrap();
    assert!(out.status.success());
    if readonly {
        // As the guest does after extracting: directories tar created too.
        pack::drop_write_bits(&guest).unwrap();
    }
    assert_eq!(
        std::fs::read(host.join(".git/index")).unwrap(),
        index_before,
        "packing changed the host index"
    );
    assert_eq!(
        std::fs::metadata(host.join(".git/index"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime_before
    );
    Fixture {
        _dir: dir,
        host,
        guest,
        base,
    }
}

fn apply(host: &Path, base: &str, patch: &[u8]) {
    git(host, &["checkout", "-q", "--force", base]);
    git(host, &["clean", "-q", "-fdx"]);
    if patch.is_empty() {
        return;
    }
    let p = host.parent().unwrap().join("work.patch");
    std::fs::write(&p, patch).unwrap();
    git(host, &["apply", "--binary", p.to_str().unwrap()]);
}

#[test]
fn plain_export_round_trips_every_kind_of_change() {
    let f = fixture(false);
    let g = &f.guest;
    assert_eq!(
        std::fs::read(g.join("a.txt")).unwrap(),
        b"alpha, edited on the host\n"
    );
    write(g, "a.txt", b"alpha, edited in the guest\n");
    std::fs::remove_file(g.join("b.txt")).unwrap();
    std::fs::rename(g.join("c.txt"), g.join("renamed.txt")).unwrap();
    write(
        g,
        "dir with space/f\u{00fc}r mich.txt",
        "grüße\n".as_bytes(),
    );
    let mut bin = std::fs::read(g.join("bin.dat")).unwrap();
    bin[100] ^= 0xff;
    bin.extend_from_slice(&[0, 159, 146, 150]);
    std::fs::write(g.join("bin.dat"), bin).unwrap();
    std::fs::set_permissions(g.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(g.join("link")).unwrap();
    symlink("renamed.txt", g.join("link")).unwrap();
    symlink("dir with space", g.join("dirlink")).unwrap();
    write(g, "guest.log", b"ignored in the guest too\n");

    let index_before = std::fs::read(g.join(".git/index")).unwrap();
    let head_before = git(g, &["rev-parse", "HEAD"]);
    let out = export(g, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(g.join(".git/index")).unwrap(),
        index_before,
        "export changed the guest index"
    );
    assert_eq!(git(g, &["rev-parse", "HEAD"]), head_before);
    let patch = out.stdout;
    let text = String::from_utf8_lossy(&patch);
    assert!(text.contains("GIT binary patch"), "binary change missing");
    assert!(
        text.contains("rename to renamed.txt"),
        "rename not detected"
    );
    assert!(!text.contains("guest.log"), "ignored file exported");

    apply(&f.host, &f.base, &patch);
    std::fs::remove_file(g.join("guest.log")).unwrap();
    assert_eq!(
        tree_of(&f.host),
        tree_of(g),
        "applied patch differs from the guest tree"
    );
    let mode = std::fs::metadata(f.host.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "exec bit lost");
}

#[test]
fn base_commit_export_includes_guest_commits_and_plain_does_not() {
    let f = fixture(false);
    let g = &f.guest;
    write(g, "committed.txt", b"made in the guest\n");
    git(g, &["add", "committed.txt"]);
    git(g, &["commit", "-q", "-m", "guest work"]);
    write(g, "a.txt", b"after the guest commit\n");

    let plain = export(g, None);
    assert!(plain.status.success());
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("committed.txt"),
        "plain export saw a guest commit"
    );

    let full = export(g, Some(&f.base));
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    assert!(String::from_utf8_lossy(&full.stdout).contains("committed.txt"));
    apply(&f.host, &f.base, &full.stdout);
    assert_eq!(tree_of(&f.host), tree_of(g));
}

#[test]
fn empty_export_unknown_base_and_readonly_bits() {
    let f = fixture(true);
    let g = &f.guest;
    for entry in walk(g) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        if !meta.file_type().is_symlink() {
            assert_eq!(
                meta.permissions().mode() & 0o222,
                0,
                "{} keeps a write bit",
                entry.display()
            );
        }
    }
    // A writable copy for the rest (a non-root test could not write a
    // read-only .git).
    let f = fixture(false);
    let g = &f.guest;
    // The host's uncommitted edits are the guest's starting point; commit
    // them in the guest: nothing is left to export.
    git(g, &["add", "-A"]);
    git(g, &["commit", "-q", "-m", "snapshot"]);
    let out = export(g, None);
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "expected an empty patch: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = export(g, Some("0123456789abcdef0123456789abcdef01234567"));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the guest"));
}

#[test]
fn include_ignored_adds_ignored_files_only_on_request() {
    let f = fixture(false);
    let repo = pack::open(&f.host, Reader::daemon()).unwrap();
    let without = String::from_utf8(pack::file_list(&repo, false).unwrap()).unwrap();
    let with = String::from_utf8(pack::file_list(&repo, true).unwrap()).unwrap();
    assert!(!without.split('\0').any(|n| n == "build.log"));
    assert!(with.split('\0').any(|n| n == "build.log"), "{with}");
    assert!(with.starts_with(".git\0"));
}

#[test]
fn not_a_repo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = pack::open(dir.path(), Reader::daemon()).unwrap_err();
    assert!(e.to_string().contains("not a git repository"), "{e}");
    let e = pack::open(&dir.path().join("missing"), Reader::daemon()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a git repository that you can read"),
        "{e}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn no_set_id_bit_survives_a_pack_and_packs_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let run = |args: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(&repo_dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    run(&["init", "-q"]);
    std::fs::write(repo_dir.join("x"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(repo_dir.join("x"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    run(&["add", "x"]);
    run(&["commit", "-q", "-m", "x"]);
    let repo = pack::open(&repo_dir, Reader::daemon()).unwrap();
    let list = pack::file_list(&repo, false).unwrap();
    let tar = dir.path().join("w.tar");
    pack::tar(&repo, &list, false, &tar).unwrap();
    let listing = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    let x = text.lines().find(|l| l.ends_with(" x")).unwrap();
    assert!(x.starts_with("-rwxr-xr-x"), "set-id bit kept: {x}");
    let mode = std::fs::metadata(&tar).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the pack is readable by others");
    if bangerd::cmd::which("mkfs.ext4").is_some() {
        let img = dir.path().join("w.img");
        image::build(&repo, &list, false, false, &img).unwrap();
        assert_eq!(
            std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("w.staging").exists());
    }
}
