//! The workspace rows: a generated repo of about 20,000 files goes into VMs
//! by `workspace prepare` (overlay and full_copy) and by `tar | ssh`, and
//! comes back by `workspace export`; each is timed and the ratios printed.

use std::path::Path;

use anyhow::ensure;

use super::timed;
use crate::sh;
use crate::smoke::Env;

/// Writes a repo of `files` files (source-like text and some binaries),
/// committed, about 10 KiB each on average.
fn make_repo(dir: &Path, files: usize) -> anyhow::Result<u64> {
    let _ = std::fs::remove_dir_all(dir);
    let mut bytes = 0u64;
    for i in 0..files {
        let sub = dir.join(format!("pkg{:03}/mod{:02}", i % 200, (i / 200) % 50));
        std::fs::create_dir_all(&sub)?;
        let body: Vec<u8> = if i % 50 == 0 {
            (0..32_768u32)
                .map(|x| (x.wrapping_mul(2_654_435_761).wrapping_add(i as u32) >> 13) as u8)
                .collect()
        } else {
            format!(
                "// file {i}\n{}",
                "fn f() -> u32 { 42 } // some source text\n".repeat(200 + i % 100)
            )
            .into_bytes()
        };
        bytes += body.len() as u64;
        std::fs::write(sub.join(format!("f{i}.rs")), body)?;
    }
    let d = dir.to_string_lossy().into_owned();
    sh::quiet(&["git", "-C", &d, "init", "-q", "-b", "main"])?;
    sh::quiet(&["git", "-C", &d, "add", "-A"])?;
    sh::quiet(&[
        "git",
        "-C",
        &d,
        "-c",
        "user.name=b",
        "-c",
        "user.email=b@b",
        "commit",
        "-q",
        "-m",
        "bench",
    ])?;
    Ok(bytes)
}

pub fn run(env: &mut Env, files: usize) -> anyhow::Result<()> {
    let repo = env.dir.join("bench-repo");
    eprintln!("==> generating a repo of {files} files");
    let bytes = make_repo(&repo, files)?;
    let r = repo.to_string_lossy().into_owned();
    eprintln!("==> booting two VMs");
    env.create_parallel(&["bench-a", "bench-b"])?;
    let overlay = timed("workspace prepare (overlay)", || {
        env.ok(&["workspace", "prepare", "bench-a", "--repo", &r])
            .map(|_| ())
    })?;
    let full = timed("workspace prepare --mode full_copy", || {
        env.ok(&[
            "workspace",
            "prepare",
            "bench-b",
            "--repo",
            &r,
            "--mode",
            "full_copy",
        ])
        .map(|_| ())
    })?;
    env.sh(
        "bench-a",
        "cd /root/repo && echo change >> pkg001/mod00/f1.rs",
    )?;
    let export = timed("workspace export (one change)", || {
        let patch = env.ok(&["workspace", "export", "bench-a"])?;
        ensure!(patch.contains("+change"), "export lacks the change");
        Ok(())
    })?;
    let info: serde_json::Value =
        serde_json::from_str(&env.ok(&["vm", "show", "bench-a", "--json"])?)?;
    let ip = info["ip"].as_str().unwrap_or_default().to_string();
    let key = env.state_dir.join("ssh/id_ed25519");
    let kh = env.state_dir.join("ssh/known_hosts");
    let ssh_copy = timed("tar | ssh into the same VM", || {
        let script = format!(
            "tar -C '{r}' -cf - . | ssh -F /dev/null -i '{}' -o UserKnownHostsFile='{}' -o StrictHostKeyChecking=yes \
             -o BatchMode=yes root@{ip} 'mkdir -p /root/ssh-copy && tar -C /root/ssh-copy -xf -'",
            key.display(),
            kh.display()
        );
        env.ns.run(&["sh", "-c", &script]).map(|_| ())
    })?;
    let count = env.sh(
        "bench-a",
        "find /root/ssh-copy -type f -not -path '*/.git/*' | wc -l",
    )?;
    ensure!(
        count.trim().parse::<usize>().unwrap_or(0) >= files,
        "tar | ssh copied {count} files"
    );
    println!();
    println!(
        "workspace bench: {files} files, {} MiB (plus .git), TCG guest",
        bytes >> 20
    );
    println!("  {:<36} {:>7.1}s", "tar | ssh (baseline)", ssh_copy);
    println!(
        "  {:<36} {:>7.1}s  {:>5.1}x faster",
        "workspace prepare (overlay)",
        overlay,
        ssh_copy / overlay
    );
    println!(
        "  {:<36} {:>7.1}s  {:>5.1}x faster",
        "workspace prepare (full_copy)",
        full,
        ssh_copy / full
    );
    println!("  {:<36} {:>7.1}s", "workspace export (one change)", export);
    Ok(())
}
