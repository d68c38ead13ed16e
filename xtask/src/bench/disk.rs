//! The copy-on-write disk rows: a VM's root disk made over a 1 GiB and a
//! 16 GiB image by each strategy this host has, with banger's own code;
//! the ratio says whether the time grows with the image.

use std::time::Instant;

use super::report::{median, Row};
use crate::smoke::Env;

pub fn run(env: &Env, rootfs: &std::path::Path, runs: usize) -> anyhow::Result<Vec<Row>> {
    let dir = env.dir.join("bench-disks");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The image's root filesystem as built (about 1 GiB), and the same
    // grown to 16 GiB (the growth sparse, as a filesystem's free space is).
    let small = dir.join("image.ext4");
    let big = dir.join("image-16g.ext4");
    for dest in [&small, &big] {
        crate::sh::quiet(&[
            "cp",
            "--sparse=always",
            &rootfs.to_string_lossy(),
            &dest.to_string_lossy(),
        ])?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)?
        .set_len(16 << 30)?;
    let small_gib = std::fs::metadata(&small)?.len() as f64 / f64::from(1u32 << 30);
    let mut rows = Vec::new();
    for disk in bangerd::disk::system_strategies() {
        if !disk.available(&dir) {
            eprintln!(
                "    {}: not available on this host, skipped",
                disk.strategy().as_str()
            );
            continue;
        }
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, base) in [&small, &big].into_iter().enumerate() {
                let dest = dir.join(format!("vm.{}", disk.strategy().file_name()));
                let t = Instant::now();
                disk.create(base, &dest, 16)?;
                times[i].push(t.elapsed().as_secs_f64());
                disk.remove(&dest)?;
            }
        }
        let name = disk.strategy().as_str();
        let ratio = median(&times[1]) / median(&times[0]);
        let [small_t, big_t] = times;
        rows.push(Row::new(
            "disk",
            &format!("{name} root disk over the {small_gib:.1} GiB image"),
            "s",
            small_t,
        ));
        rows.push(
            Row::new(
                "disk",
                &format!("{name} root disk over it grown to 16 GiB"),
                "s",
                big_t,
            )
            .with_ratio("of the image as built", ratio),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}
