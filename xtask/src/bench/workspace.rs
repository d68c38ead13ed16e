//! The workspace rows: a generated repo of about 20,000 files goes into VMs
//! by `workspace prepare` (overlay and full_copy), by `tar | ssh` and by
//! `rsync -a` over SSH, and comes back by `workspace export` (one change,
//! then 1,000 changed files). Each row is the median of 3 runs, or of one
//! when a run takes a minute or more; the rows are printed side by side
//! and returned as data.

use std::path::Path;

use anyhow::{ensure, Context};

use super::timed;
use crate::sh;
use crate::smoke::Env;

/// A run longer than this is not repeated.
const REPEAT_UNDER_S: f64 = 60.0;
const RUNS: usize = 3;
/// Files changed in the guest for the large export.
const CHANGED: usize = 1000;

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// Median of the runs, in seconds.
    pub median_s: f64,
    /// Slowest minus fastest run, in seconds (0 for one run).
    pub spread_s: f64,
    pub runs: usize,
    /// How many times faster than `tar | ssh` into the same VM (copies
    /// only).
    pub ratio: Option<f64>,
}

impl Row {
    fn new(name: &str, samples: &[f64], baseline: Option<f64>) -> Row {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Row {
            name: name.to_string(),
            median_s: median,
            spread_s: s[n - 1] - s[0],
            runs: n,
            ratio: baseline.map(|b| b / median),
        }
    }

    /// The row as `target/bench.json` holds it.
    #[allow(dead_code)] // the caller that writes bench.json takes it
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "median_s": self.median_s,
            "spread_s": self.spread_s,
            "runs": self.runs,
            "ratio": self.ratio,
        })
    }
}

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

/// Times `run(i)` once, and twice more when that took under a minute.
fn sampled(
    label: &str,
    mut run: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut samples = vec![timed(&format!("{label} (run 1)"), || run(0))?];
    if samples[0] < REPEAT_UNDER_S {
        for i in 1..RUNS {
            samples.push(timed(&format!("{label} (run {})", i + 1), || run(i))?);
        }
    }
    Ok(samples)
}

/// The image the workspace rows' VMs boot: the default image with rsync,
/// for the `rsync -a` row (every row uses the same VMs).
const IMAGE: &str = "bench-rsync";

/// Builds [`IMAGE`] unless the image directory has it.
fn ensure_image(env: &Env) -> anyhow::Result<()> {
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
    if list
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i["name"] == IMAGE)
    {
        return Ok(());
    }
    eprintln!("==> building image {IMAGE} (the default packages and rsync)");
    env.ok(&["image", "build", IMAGE, "--include", "rsync"])
        .map(drop)
}

/// Installs rsync on the host for the `rsync -a` row, if it lacks it.
fn ensure_host_rsync() {
    if sh::capture(&["sh", "-c", "command -v rsync"]).is_ok_and(|o| o.status.success()) {
        return;
    }
    eprintln!("==> apt-get install rsync (the host side of the rsync -a row)");
    let _ = sh::capture(&[
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "rsync",
    ]);
}

/// Waits (up to 3 minutes) until [`IMAGE`] has a template, so no template
/// build runs in the background of a measurement.
fn wait_for_template(env: &Env) -> anyhow::Result<()> {
    for _ in 0..180 {
        let list: serde_json::Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
        let has = list.as_array().into_iter().flatten().any(|i| {
            i["name"] == IMAGE && i["templates"].as_array().is_some_and(|t| !t.is_empty())
        });
        if has {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    eprintln!("    (no template after 3 minutes: VMs boot cold, and a build may run alongside)");
    Ok(())
}

/// `ssh` to `ip` with the daemon's key and pinned host keys, as a prefix
/// for a shell command line.
fn ssh_prefix(env: &Env) -> String {
    format!(
        "ssh -F /dev/null -i '{}' -o UserKnownHostsFile='{}' -o StrictHostKeyChecking=yes -o BatchMode=yes",
        env.state_dir.join("ssh/id_ed25519").display(),
        env.state_dir.join("ssh/known_hosts").display()
    )
}

fn ip_of(env: &Env, vm: &str) -> anyhow::Result<String> {
    Ok(env.vm_json(vm)?["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Why the rsync row cannot run, if it cannot.
fn rsync_missing(env: &Env, vm: &str) -> anyhow::Result<Option<String>> {
    if !sh::capture(&["sh", "-c", "command -v rsync"])?
        .status
        .success()
    {
        return Ok(Some("the host has no rsync".into()));
    }
    let out = env.banger(&["vm", "exec", vm, "--", "sh", "-c", "command -v rsync"]);
    if !out.status.success() {
        return Ok(Some(
            "the guest image has no rsync (build one with `banger image build --include rsync`)"
                .into(),
        ));
    }
    Ok(None)
}

pub fn run(env: &mut Env, files: usize) -> anyhow::Result<Vec<Row>> {
    let repo = env.dir.join("bench-repo");
    eprintln!("==> generating a repo of {files} files");
    let bytes = make_repo(&repo, files)?;
    let r = repo.to_string_lossy().into_owned();
    // One VM per prepare (a VM has one workspace); the first boots cold
    // and makes the template the others are restored from.
    let overlay_vms = ["bench-a", "bench-a2", "bench-a3"];
    let full_vms = ["bench-b", "bench-b2", "bench-b3"];
    ensure_host_rsync();
    ensure_image(env)?;
    let image = ["--image", IMAGE];
    eprintln!("==> booting the VMs");
    env.create("bench-a", &image)?;
    wait_for_template(env)?;
    env.create_parallel_with(&["bench-a2", "bench-a3", "bench-b"], &image)?;

    let overlay = sampled("workspace prepare (overlay)", |i| {
        env.ok(&["workspace", "prepare", overlay_vms[i], "--repo", &r])
            .map(|_| ())
    })?;
    let prepare_full = |vm: &str| {
        env.ok(&[
            "workspace",
            "prepare",
            vm,
            "--repo",
            &r,
            "--mode",
            "full_copy",
        ])
        .map(|_| ())
    };
    let mut full = vec![timed("workspace prepare --mode full_copy (run 1)", || {
        prepare_full(full_vms[0])
    })?];
    if full[0] < REPEAT_UNDER_S {
        env.create_parallel_with(&full_vms[1..], &image)?;
        for (i, vm) in full_vms.iter().enumerate().skip(1) {
            let label = format!("workspace prepare --mode full_copy (run {})", i + 1);
            full.push(timed(&label, || prepare_full(vm))?);
        }
    }

    let export_one = sampled("workspace export (one change)", |i| {
        env.sh(
            "bench-a",
            &format!("cd /root/repo && echo change{i} >> pkg001/mod00/f1.rs"),
        )?;
        let patch = env.ok(&["workspace", "export", "bench-a"])?;
        ensure!(
            patch.contains(&format!("+change{i}")),
            "export lacks the change"
        );
        Ok(())
    })?;
    eprintln!("==> changing {CHANGED} files in the guest");
    env.sh(
        "bench-a",
        &format!(
            "cd /root/repo && git ls-files -z -- pkg1* | head -z -n {CHANGED} | xargs -0 sed -i '$a changed in the guest'"
        ),
    )?;
    let export_many = sampled(
        &format!("workspace export ({CHANGED} changed files)"),
        |_| {
            let patch = env.ok(&["workspace", "export", "bench-a"])?;
            let diffs = patch.matches("\ndiff --git ").count()
                + usize::from(patch.starts_with("diff --git "));
            ensure!(
                diffs > CHANGED,
                "export has {diffs} files, not {} or more",
                CHANGED + 1
            );
            Ok(())
        },
    )?;

    let ip = ip_of(env, "bench-a")?;
    let ssh = ssh_prefix(env);
    let tar_ssh = sampled("tar | ssh into the same VM", |i| {
        let script = format!(
            "tar -C '{r}' -cf - . | {ssh} root@{ip} 'mkdir -p /root/ssh-copy{i} && tar -C /root/ssh-copy{i} -xf -'"
        );
        env.ns.run(&["sh", "-c", &script]).map(|_| ())
    })?;
    let count = env.sh(
        "bench-a",
        "find /root/ssh-copy0 -type f -not -path '*/.git/*' | wc -l",
    )?;
    ensure!(
        count.trim().parse::<usize>().unwrap_or(0) >= files,
        "tar | ssh copied {count} files"
    );
    let baseline = Row::new("tar | ssh (baseline)", &tar_ssh, None).median_s;

    let mut rows = vec![Row::new("tar | ssh (baseline)", &tar_ssh, Some(baseline))];
    match rsync_missing(env, "bench-a")? {
        Some(why) => eprintln!("    rsync -a over SSH: skipped: {why}"),
        None => {
            let rsync = sampled("rsync -a over SSH into the same VM", |i| {
                let script = format!("rsync -a -e \"{ssh}\" '{r}/' root@{ip}:/root/rsync-copy{i}/");
                env.ns.run(&["sh", "-c", &script]).map(|_| ())
            })
            .context("rsync -a over SSH")?;
            rows.push(Row::new("rsync -a over SSH", &rsync, Some(baseline)));
        }
    }
    rows.push(Row::new(
        "workspace prepare (overlay)",
        &overlay,
        Some(baseline),
    ));
    rows.push(Row::new(
        "workspace prepare (full_copy)",
        &full,
        Some(baseline),
    ));
    rows.push(Row::new("workspace export (one change)", &export_one, None));
    rows.push(Row::new(
        &format!("workspace export ({CHANGED} changed files)"),
        &export_many,
        None,
    ));
    print_rows(files, bytes, &rows);
    Ok(rows)
}

fn print_rows(files: usize, bytes: u64, rows: &[Row]) {
    println!();
    println!(
        "workspace bench: {files} files, {} MiB (plus .git), TCG guest",
        bytes >> 20
    );
    println!(
        "  {:<36} {:>8} {:>8} {:>4}  {:>8}",
        "", "median", "spread", "runs", "vs tar|ssh"
    );
    for row in rows {
        let ratio = row
            .ratio
            .map(|x| format!("{x:.1}x faster"))
            .unwrap_or_default();
        println!(
            "  {:<36} {:>7.1}s {:>7.1}s {:>4}  {}",
            row.name, row.median_s, row.spread_s, row.runs, ratio
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_take_the_median_and_the_spread() {
        let r = Row::new("x", &[3.0, 1.0, 2.0], Some(10.0));
        assert_eq!((r.median_s, r.spread_s, r.runs), (2.0, 2.0, 3));
        assert_eq!(r.ratio, Some(5.0));
        let one = Row::new("y", &[4.0], None);
        assert_eq!((one.median_s, one.spread_s, one.ratio), (4.0, 0.0, None));
        assert_eq!(one.json()["name"], "y");
    }
}
