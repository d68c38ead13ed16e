//! `cargo xtask bench`: measurements printed side by side from one run,
//! in a network namespace of its own: create-to-SSH (restored, cold, and
//! a hand-started QEMU of the same files), copy-on-write disk creation,
//! concurrent creates, memory, and workspaces. One table on stdout, the
//! same rows in `target/bench.json`.

use std::time::Instant;

use anyhow::Context;

mod boot;
mod disk;
mod handboot;
mod memory;
mod report;
mod workspace;

use crate::smoke::Env;
use crate::{setup, sh};

const FILES: usize = 20_000;
/// Samples per row (the median of them is reported).
const RUNS: usize = 3;

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

pub fn run(args: &[String]) -> anyhow::Result<i32> {
    let files = flag(args, "--files").unwrap_or(FILES);
    let runs = flag(args, "--runs").unwrap_or(RUNS).max(1);
    let only: Option<String> = flag(args, "--only");
    let image_dir: Option<std::path::PathBuf> = flag(args, "--keep-image");
    if let Some(o) = &only {
        anyhow::ensure!(
            ["start", "disk", "workspace"].contains(&o.as_str()),
            "--only {o}: use start, disk or workspace"
        );
    }
    let wants = |group: &str| only.as_deref().is_none_or(|o| o == group);
    setup::run()?;
    // The build a user installs (README): an unoptimised daemon would add
    // its own slowness to every row.
    let banger = sh::build_banger(true)?;
    let mut env = Env::start(&banger, image_dir.as_deref())?;
    let result = (|| -> anyhow::Result<Vec<report::Row>> {
        let mut rows = Vec::new();
        // The start and disk groups build the default image first when
        // the image directory has none (not timed).
        if wants("start") {
            rows.extend(boot::run(&env, runs)?);
        }
        if wants("disk") {
            let rootfs = boot::image_dir(&env)?.join("rootfs.ext4");
            rows.extend(disk::run(&env, &rootfs, runs)?);
        }
        if wants("workspace") {
            for w in workspace::run(&mut env, files)? {
                let row =
                    report::Row::summarised("workspace", &w.name, w.median_s, w.spread_s, w.runs);
                rows.push(match w.ratio {
                    Some(r) => row.with_ratio("faster than tar | ssh", r),
                    None => row,
                });
            }
        }
        Ok(rows)
    })();
    env.teardown();
    let rows = result?;
    let machine = report::machine();
    report::print(&rows, &machine);
    let json = sh::root().join("target/bench.json");
    report::write_json(&rows, &machine, &json)?;
    eprintln!("rows written to {}", json.display());
    Ok(0)
}

pub(crate) fn timed(label: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f().with_context(|| label.to_string())?;
    let s = t.elapsed().as_secs_f64();
    eprintln!("    {label}: {s:.1}s");
    Ok(s)
}
