//! `cargo xtask bench`: measurements printed side by side from one run.

use std::time::Instant;

use anyhow::Context;

mod workspace;

use crate::smoke::Env;
use crate::{setup, sh};

const FILES: usize = 20_000;

pub fn run(args: &[String]) -> anyhow::Result<i32> {
    let files = args
        .iter()
        .position(|a| a == "--files")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(FILES);
    let image_dir = args
        .iter()
        .position(|a| a == "--keep-image")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    setup::run()?;
    let banger = sh::build_banger()?;
    let mut env = Env::start(&banger, image_dir.as_deref())?;
    let result = workspace::run(&mut env, files);
    env.teardown();
    result?;
    Ok(0)
}

pub(crate) fn timed(label: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f().with_context(|| label.to_string())?;
    let s = t.elapsed().as_secs_f64();
    eprintln!("    {label}: {s:.1}s");
    Ok(s)
}
