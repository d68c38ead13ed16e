//! Workspace export after every kind of change, in a real guest, in both
//! modes: edits, new files (names with spaces, non-ASCII and glob
//! characters), deletions, mode changes, symlinks, a directory deleted,
//! one deleted and made again, a file become a directory, a binary edit,
//! then a guest commit. Each patch, applied to the host repo at its base,
//! must give exactly the guest's tree (same git tree id). In overlay mode
//! the export must have looked only at what changed (the daemon logs what
//! the guest's export said).

use anyhow::ensure;

use super::env::{Env, VmSpec};
use super::Outcome;

pub const OVERLAY: VmSpec = VmSpec::running("smoke-wsx-o").with_workspace(&[]);
pub const FULL: VmSpec = VmSpec::running("smoke-wsx-f").with_workspace(&["--mode", "full_copy"]);

/// The changes, made in the guest in one go.
const CHANGES: &str = r#"set -e
cd /root/repo
echo 'edited in the guest' >> README
echo 'new in the guest' > 'new file ü*.txt'
rm notes.txt
chmod +x src/main.c
ln -s src/main.c link
mkdir -p lib/deep && echo deep > lib/deep/x.c && echo obj > lib/deep/x.o
rm -rf src && mkdir src && echo 'int main(void) { return 2; }' > src/main.c
printf '\000\001\002binary' > blob.bin
git add blob.bin && git -c user.name=g -c user.email=g@g commit -q -m 'guest work'
echo after-commit >> README
rm -rf lib && echo 'lib is a file now' > lib
"#;

/// The guest's tree id, every file read (ignored ones left out).
const GUEST_TREE: &str = "cd /root/repo && export GIT_INDEX_FILE=$(mktemp -u) && git add -A . && git write-tree && rm -f $GIT_INDEX_FILE";

fn host_tree(dir: &str) -> anyhow::Result<String> {
    crate::sh::quiet(&[
        "sh",
        "-c",
        &format!("cd '{dir}' && export GIT_INDEX_FILE=$(mktemp -u) && git add -A . && git write-tree && rm -f $GIT_INDEX_FILE"),
    ])
}

/// Applies `patch` to a clone of `vm`'s host repo at `base` and compares
/// trees with the guest.
fn round_trip(env: &Env, vm: &str, base: &str, patch: &str, what: &str) -> anyhow::Result<()> {
    let (repo, _) = env.host_repo(vm)?;
    let clone = env.dir.join(format!("{vm}-{what}"));
    let _ = std::fs::remove_dir_all(&clone);
    let c = clone.to_string_lossy().into_owned();
    crate::sh::quiet(&["git", "clone", "-q", &repo.to_string_lossy(), &c])?;
    crate::sh::quiet(&["git", "-C", &c, "checkout", "-q", base])?;
    if !patch.is_empty() {
        let file = env.dir.join(format!("{vm}-{what}.patch"));
        std::fs::write(&file, patch)?;
        crate::sh::quiet(&[
            "git",
            "-C",
            &c,
            "apply",
            "--binary",
            &file.to_string_lossy(),
        ])?;
    }
    let host = host_tree(&c)?;
    let guest = env.sh(vm, GUEST_TREE)?;
    ensure!(
        host.trim() == guest.trim(),
        "{vm}, {what} export: the patch gives tree {} on the host, the guest has {}",
        host.trim(),
        guest.trim()
    );
    Ok(())
}

fn exact(env: &Env, vm: &str) -> anyhow::Result<()> {
    let (_, head) = env.host_repo(vm)?;
    env.sh(vm, CHANGES)?;
    // Plain: against the guest's HEAD (its commit included in the base).
    let guest_head = env.sh(vm, "git -C /root/repo rev-parse HEAD^")?;
    ensure!(
        guest_head.trim() == head,
        "the guest's commit is not on the host's HEAD"
    );
    let plain = env.ok(&["workspace", "export", vm])?;
    ensure!(
        !plain.contains("blob.bin"),
        "plain export has the guest's commit"
    );
    // The guest's commit is not on the host: replay it first (git am), then
    // the plain patch (--base-commit covers both at once below).
    let commit = env.sh(
        vm,
        "git -C /root/repo format-patch --stdout --binary -1 HEAD",
    )?;
    let (repo, _) = env.host_repo(vm)?;
    let with_commit = env.dir.join(format!("{vm}-commit"));
    let _ = std::fs::remove_dir_all(&with_commit);
    let w = with_commit.to_string_lossy().into_owned();
    crate::sh::quiet(&["git", "clone", "-q", &repo.to_string_lossy(), &w])?;
    let mbox = env.dir.join(format!("{vm}-commit.mbox"));
    std::fs::write(&mbox, commit)?;
    crate::sh::quiet(&[
        "git",
        "-C",
        &w,
        "-c",
        "user.name=h",
        "-c",
        "user.email=h@h",
        "am",
        "-q",
        &mbox.to_string_lossy(),
    ])?;
    // Plain export onto the host repo plus the guest's commit.
    let plain_file = env.dir.join(format!("{vm}-plain.patch"));
    std::fs::write(&plain_file, &plain)?;
    if !plain.is_empty() {
        crate::sh::quiet(&[
            "git",
            "-C",
            &w,
            "apply",
            "--binary",
            &plain_file.to_string_lossy(),
        ])?;
    }
    let host = host_tree(&w)?;
    let guest = env.sh(vm, GUEST_TREE)?;
    ensure!(
        host.trim() == guest.trim(),
        "{vm}, plain export: the patch gives tree {} on the host, the guest has {}",
        host.trim(),
        guest.trim()
    );
    // --base-commit: from the host's HEAD, the guest's commit included.
    let based = env.ok(&["workspace", "export", vm, "--base-commit", &head])?;
    ensure!(
        based.contains("blob.bin"),
        "--base-commit export lacks the guest's commit"
    );
    round_trip(env, vm, &head, &based, "base")?;
    Ok(())
}

pub fn exact_in_both_modes(env: &Env) -> anyhow::Result<Outcome> {
    exact(env, OVERLAY.name)?;
    exact(env, FULL.name)?;
    // The overlay export looked at what changed only; full_copy at every file.
    let log = std::fs::read_to_string(env.dir.join("daemon.log"))?;
    let said = |vm: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("export looked at") && l.contains(&format!("vm={vm}")))
            .map(str::to_string)
            .collect()
    };
    let overlay = said(OVERLAY.name);
    ensure!(
        overlay.len() >= 2 && overlay.iter().all(|l| !l.contains("every file")),
        "the overlay export scanned every file: {overlay:?}"
    );
    let full = said(FULL.name);
    ensure!(
        full.iter().all(|l| l.contains("every file")),
        "full_copy: {full:?}"
    );
    Ok(Outcome::Pass)
}
