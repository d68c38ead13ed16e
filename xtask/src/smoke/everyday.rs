//! Scenarios of issue 13's images and lifetimes: an image with an extra
//! package and a build script, booted; an image made from a stopped VM's
//! disk; `vm create --repo` in one step (and a bad repo that makes no VM);
//! VM lifetimes, also across a daemon restart. Each makes and removes its
//! own VMs and images (the image directory may be a kept one).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use super::{note, Env, Outcome};

pub const CUSTOM: &str = "smoke-custom";
pub const SRC: &str = "smoke-src";
pub const SNAP: &str = "smoke-snap";
pub const REPO: &str = "smoke-repo";
pub const TTL: &str = "smoke-ttl";
pub const TTL_RESTART: &str = "smoke-ttl2";

const SCRIPT: &str = "#!/bin/sh\nset -e\necho 'baked at build time' > /etc/banger-smoke-script\n";

/// The versions of image `name` that `image list --json` shows.
fn image_versions(env: &Env, name: &str) -> anyhow::Result<Vec<Value>> {
    let list: Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
    Ok(list
        .as_array()
        .map(|a| a.iter().filter(|i| i["name"] == name).cloned().collect())
        .unwrap_or_default())
}

/// `image build --include hello --script FILE`, a VM of it has both; a bad
/// package name is refused before anything is built.
pub fn image_custom(env: &Env) -> anyhow::Result<Outcome> {
    env.fails(
        &["image", "build", "smoke-bad", "--include", "hello;rm"],
        "not a Debian package name",
    )?;
    ensure!(
        !env.image_dir.join("smoke-bad").exists(),
        "a refused build left files"
    );
    let script = env.dir.join("build-script.sh");
    std::fs::write(&script, SCRIPT)?;
    let digest = crate::sh::quiet(&["sha256sum", &script.to_string_lossy()])?;
    let digest = digest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let t = Instant::now();
    let script_arg = script.to_string_lossy().into_owned();
    env.ok(&[
        "image",
        "build",
        CUSTOM,
        "--include",
        "hello",
        "--script",
        &script_arg,
    ])?;
    note(format!(
        "image build with --include and --script: {:.0}s",
        t.elapsed().as_secs_f64()
    ));
    let versions = image_versions(env, CUSTOM)?;
    let v = versions
        .first()
        .context("image list does not show the image")?;
    ensure!(
        v["includes"] == serde_json::json!(["hello"]),
        "includes: {v}"
    );
    ensure!(v["script_sha256"] == digest.as_str(), "script digest: {v}");
    ensure!(v["suite"] == "bookworm", "suite: {v}");
    let table = env.ok(&["image", "list"])?;
    ensure!(table.contains("+hello script:"), "image list: {table}");
    env.create(CUSTOM, &["--image", CUSTOM])?;
    let hello = env.sh(CUSTOM, "hello")?;
    ensure!(hello.contains("Hello, world!"), "hello: {hello:?}");
    let baked = env.sh(CUSTOM, "cat /etc/banger-smoke-script")?;
    ensure!(
        baked.trim() == "baked at build time",
        "script's file: {baked:?}"
    );
    ensure!(
        env.sh(CUSTOM, "test ! -e /tmp/banger-build-script && echo gone")?
            .trim()
            == "gone",
        "the build script was left in the image"
    );
    env.ok(&["vm", "delete", "-f", CUSTOM])?;
    env.ok(&["image", "rm", CUSTOM])?;
    Ok(Outcome::Pass)
}

/// A file written in a VM is in a VM made from `image create --from-vm`.
pub fn image_from_vm(env: &Env) -> anyhow::Result<Outcome> {
    env.create(SRC, &[])?;
    env.sh(SRC, "echo 'made in the source VM' > /root/kept.txt && sync")?;
    env.fails(
        &["image", "create", SNAP, "--from-vm", SRC],
        &format!("banger vm stop {SRC}"),
    )?;
    env.ok(&["vm", "stop", SRC])?;
    let t = Instant::now();
    env.ok(&["image", "create", SNAP, "--from-vm", SRC])?;
    let took = t.elapsed();
    let versions = image_versions(env, SNAP)?;
    let v = versions
        .first()
        .context("image list does not show the new image")?;
    ensure!(
        v["from_vm"].as_str().is_some_and(|f| f.starts_with(SRC)),
        "from_vm: {v}"
    );
    note(format!(
        "image create --from-vm of a {} MiB disk: {:.2}s",
        v["rootfs_bytes"].as_u64().unwrap_or(0) >> 20,
        took.as_secs_f64()
    ));
    env.ok(&["vm", "delete", "-f", SRC])?;
    let child = "smoke-snapvm";
    env.create(child, &["--image", SNAP])?;
    let kept = env.sh(child, "cat /root/kept.txt")?;
    ensure!(kept.trim() == "made in the source VM", "kept.txt: {kept:?}");
    env.ok(&["vm", "delete", "-f", child])?;
    env.ok(&["image", "rm", SNAP])?;
    Ok(Outcome::Pass)
}

/// `vm create --repo` prepares the workspace; a path that is not a repo is
/// refused and no VM is made.
pub fn create_with_repo(env: &Env) -> anyhow::Result<Outcome> {
    let plain = env.dir.join("not-a-repo");
    std::fs::create_dir_all(&plain)?;
    let plain = plain.to_string_lossy().into_owned();
    env.fails(
        &["vm", "create", "--name", "smoke-norepo", "--repo", &plain],
        "not a git repository",
    )?;
    let gone = env.banger(&["vm", "show", "smoke-norepo"]);
    ensure!(!gone.status.success(), "a VM was made for a bad repo");
    let (repo, head) = env.host_repo(REPO)?;
    let repo = repo.to_string_lossy().into_owned();
    env.create(
        REPO,
        &["--repo", &repo, "--mode", "full_copy", "--readonly"],
    )?;
    let ws = &env.vm_json(REPO)?["workspace"];
    ensure!(
        ws["head"] == head.as_str() && ws["mode"] == "full_copy",
        "workspace: {ws}"
    );
    let guest_head = env.sh(REPO, "git -C /root/repo rev-parse HEAD")?;
    ensure!(
        guest_head.trim() == head,
        "guest HEAD {guest_head:?}, host {head}"
    );
    let writable = env.sh(
        REPO,
        "find /root/repo -mindepth 1 ! -type l -perm /222 | wc -l",
    )?;
    ensure!(
        writable.trim() == "0",
        "--readonly left {writable} writable files"
    );
    env.ok(&["vm", "delete", "-f", REPO])?;
    Ok(Outcome::Pass)
}

/// Polls until VM `vm` is gone; how long that took.
fn wait_gone(env: &Env, vm: &str, limit: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        let out = env.banger(&["vm", "show", vm, "--json"]);
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no VM named") {
            return Ok(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    anyhow::bail!("{vm} still exists {}s later", limit.as_secs())
}

/// `vm create --ttl 20s`: `vm list` shows what is left; the VM goes.
pub fn ttl(env: &Env) -> anyhow::Result<Outcome> {
    env.fails(
        &["vm", "create", "--name", TTL, "--ttl", "10"],
        "such as 90s",
    )?;
    env.create(TTL, &["--ttl", "40s"])?;
    let list = env.ok(&["vm", "list"])?;
    let line = list
        .lines()
        .find(|l| l.starts_with(TTL))
        .unwrap_or_default();
    ensure!(
        line.split_whitespace()
            .last()
            .is_some_and(|t| t.ends_with('s')),
        "vm list shows no time left: {line:?}"
    );
    let expires = env.vm_json(TTL)?["expires_at"]
        .as_i64()
        .context("no expires_at")?;
    let left = expires - now();
    ensure!((1..=40).contains(&left), "{left}s left of 40s");
    let took = wait_gone(env, TTL, Duration::from_secs(left as u64 + 30))?;
    note(format!(
        "deleted {:.0}s after {left}s were left",
        took.as_secs_f64()
    ));
    let list = env.ok(&["vm", "list"])?;
    ensure!(!list.contains(TTL), "still listed: {list}");
    Ok(Outcome::Pass)
}

/// `vm set-ttl` on a VM, then a daemon restart: the deadline holds.
pub fn ttl_restart(env: &Env) -> anyhow::Result<Outcome> {
    env.create(TTL_RESTART, &["--ttl", "1d"])?;
    env.ok(&["vm", "set-ttl", TTL_RESTART, "none"])?;
    ensure!(
        env.vm_json(TTL_RESTART)?["expires_at"].is_null(),
        "none kept a deadline"
    );
    env.ok(&["vm", "set-ttl", TTL_RESTART, "25s"])?;
    let expires = env.vm_json(TTL_RESTART)?["expires_at"]
        .as_i64()
        .context("no deadline")?;
    env.stop_daemon();
    std::thread::sleep(Duration::from_secs(3));
    env.start_daemon()?;
    ensure!(
        env.vm_json(TTL_RESTART)?["expires_at"].as_i64() == Some(expires),
        "the restarted daemon lost the deadline"
    );
    let left = (expires - now()).max(0) as u64;
    wait_gone(env, TTL_RESTART, Duration::from_secs(left + 30))?;
    Ok(Outcome::Pass)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
