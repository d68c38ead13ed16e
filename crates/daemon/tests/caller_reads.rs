//! A repo is read with the caller's rights, never the daemon's: run as root
//! with an unprivileged user the test makes (and removes). Skips, saying
//! why, when not root.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use bangerd::workspace::pack;
use bangerd::workspace::reader::Reader;

mod common;

/// A user made for the test, removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create() -> TestUser {
        TestUser::create_named("a")
    }

    fn reader(&self) -> Reader {
        Reader {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn sh(dir: &Path, script: &str) {
    let ok = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    sh(
        dir,
        "git init -q && echo hello > README && git add README && \
         git -c user.name=t -c user.email=t@t commit -q -m first && echo edit >> README",
    );
}

fn chown_r(path: &Path, user: &TestUser) {
    sh(
        Path::new("/"),
        &format!("chown -R {}:{} '{}'", user.uid, user.gid, path.display()),
    );
}

#[test]
fn a_caller_packs_only_what_it_can_read() {
    if !common::is_root() {
        eprintln!("skipped: needs root to make a user and read as it");
        return;
    }
    let user = TestUser::create();
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Root's repo in a 0700 directory, with a private key beside the code.
    let private = top.path().join("private");
    make_repo(&private.join("repo"));
    std::fs::write(private.join("repo/id_ed25519"), "SECRET").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = pack::open(&private.join("repo"), user.reader()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a git repository that you can read"),
        "{e}"
    );

    // The user's own repo holding a file only root can read: packing fails
    // instead of carrying it into the guest.
    let mine = top.path().join("mine");
    make_repo(&mine);
    chown_r(&mine, &user);
    std::fs::write(mine.join("root-only.txt"), "SECRET").unwrap();
    std::fs::set_permissions(
        mine.join("root-only.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let repo = pack::open(&mine, user.reader()).unwrap();
    let list = pack::file_list(&repo, false).unwrap();
    let out = top.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = pack::tar(&repo, &list, false, &out.join("a.tar")).unwrap_err();
    assert!(e.to_string().contains("must be readable by you"), "{e}");
    assert!(!out.join("a.tar").exists(), "a failed pack left its tar");

    // Without it, the user's repo packs, into a file only root can reach.
    std::fs::remove_file(mine.join("root-only.txt")).unwrap();
    let list = pack::file_list(&repo, false).unwrap();
    pack::tar(&repo, &list, false, &out.join("b.tar")).unwrap();
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(out.join("b.tar"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.contains("README") && names.contains(".git/HEAD"),
        "{names}"
    );
    assert_eq!(std::fs::metadata(out.join("b.tar")).unwrap().uid(), 0);
}

#[test]
fn root_reads_a_users_repo_as_its_owner() {
    if !common::is_root() {
        eprintln!("skipped: needs root to make a user and read as it");
        return;
    }
    let user = TestUser::create_named("r");
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo_dir = top.path().join("theirs");
    make_repo(&repo_dir);
    chown_r(&repo_dir, &user);
    // Plain git as root refuses it ("dubious ownership"): the case of
    // `sudo banger workspace prepare VM --repo ~/src/x`.
    let plain = Command::new("git")
        .arg("-C")
        .arg(&repo_dir)
        .args(["rev-parse", "--show-toplevel"])
        .env("HOME", top.path())
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "git as root accepted another user's repo"
    );
    let reader = Reader::for_caller(0, 0, &repo_dir);
    assert_eq!(reader, user.reader());
    let repo = pack::open(&repo_dir, reader).unwrap();
    assert!(repo.head.is_some());
}

impl TestUser {
    fn create_named(suffix: &str) -> TestUser {
        let name = format!("bgr-it{suffix}-{}", std::process::id());
        let _ = Command::new("userdel").arg(&name).output();
        let ok = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ])
            .arg(&name)
            .status()
            .unwrap()
            .success();
        assert!(ok, "useradd {name}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }
}
