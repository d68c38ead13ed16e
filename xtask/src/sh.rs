//! Running commands from xtask: visible steps, captured output.

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

/// Runs a visible step; fails if it fails.
pub fn step(title: &str, argv: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> {title}");
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    if !status.success() {
        bail!("{title} failed ({status})");
    }
    Ok(())
}

/// Runs and captures; never fails on a non-zero exit.
pub fn capture(argv: &[&str]) -> anyhow::Result<Output> {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv[0]))
}

/// Runs quietly; Ok only on success.
pub fn quiet(argv: &[&str]) -> anyhow::Result<String> {
    let out = capture(argv)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (xtask lives one level down).
pub fn root() -> std::path::PathBuf {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(|p| p.to_path_buf()).unwrap_or(here)
}

/// Builds the banger binary (a debug build, or `release`) and returns its
/// path.
pub fn build_banger(release: bool) -> anyhow::Result<std::path::PathBuf> {
    let mut argv = vec!["cargo", "build", "--package", "banger"];
    if release {
        argv.push("--release");
    }
    step("cargo build (banger)", &argv)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("banger"))
}
