//! Line coverage of the daemon and CLI from a smoke run: an instrumented
//! build (cargo-llvm-cov), the run, then a per-module table like the
//! original's, written to a file and compared with a baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::sh;

/// The environment an instrumented build and its processes need.
pub struct Coverage {
    env: Vec<(String, String)>,
    pub binary: PathBuf,
}

fn llvm_cov(args: &[&str], env: &[(String, String)]) -> anyhow::Result<std::process::Output> {
    let out = Command::new("cargo")
        .arg("llvm-cov")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .context("running cargo llvm-cov")?;
    if !out.status.success() {
        bail!(
            "cargo llvm-cov {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Installs the tools when missing.
fn ensure_tools() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["llvm-cov", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        sh::step(
            "rustup component add llvm-tools-preview",
            &["rustup", "component", "add", "llvm-tools-preview"],
        )?;
        sh::step(
            "cargo install cargo-llvm-cov",
            &["cargo", "install", "--locked", "cargo-llvm-cov"],
        )?;
    }
    Ok(())
}

/// Builds an instrumented `banger` and sets this process's environment so
/// every banger process the smoke suite starts writes its profile.
pub fn prepare() -> anyhow::Result<Coverage> {
    ensure_tools()?;
    let out = llvm_cov(&["show-env", "--sh"], &[])?;
    let env: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.trim_matches(|c| c == '"' || c == '\'').to_string(),
            )
        })
        .collect();
    llvm_cov(&["clean", "--workspace"], &env)?;
    eprintln!("==> instrumented build of banger");
    let status = Command::new("cargo")
        .args(["build", "--package", "banger"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()?;
    if !status.success() {
        bail!("instrumented build failed");
    }
    let target = env
        .iter()
        .find(|(k, _)| k == "CARGO_LLVM_COV_TARGET_DIR" || k == "CARGO_TARGET_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(|| sh::root().join("target"));
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    Ok(Coverage {
        binary: target.join("debug").join("banger"),
        env,
    })
}

/// The module a source file belongs to, in the original's terms.
pub fn module_of(file: &str) -> Option<String> {
    let rel = file.split("crates/").nth(1)?;
    let (krate, rest) = rel.split_once('/')?;
    let rest = rest.strip_prefix("src/")?;
    Some(match krate {
        "cli" => "cli".into(),
        "api" => "api".into(),
        "daemon" => match rest.split_once('/') {
            Some((dir, _)) => dir.to_string(),
            None => match rest.trim_end_matches(".rs") {
                "lib" | "errors" | "server" => "daemon".into(),
                other => other.to_string(),
            },
        },
        _ => return None,
    })
}

/// Covered and total lines per module.
pub type Table = BTreeMap<String, (u64, u64)>;

pub fn report(cov: &Coverage, out_file: &Path) -> anyhow::Result<Table> {
    let out = llvm_cov(&["report", "--json", "--summary-only"], &cov.env)?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let mut table = Table::new();
    for f in v["data"][0]["files"].as_array().into_iter().flatten() {
        let Some(module) = f["filename"].as_str().and_then(module_of) else {
            continue;
        };
        let lines = &f["summary"]["lines"];
        let e = table.entry(module).or_default();
        e.0 += lines["covered"].as_u64().unwrap_or(0);
        e.1 += lines["count"].as_u64().unwrap_or(0);
    }
    let json: BTreeMap<&String, Value> = table
        .iter()
        .map(|(m, (c, t))| (m, json!({"covered": c, "lines": t, "percent": pct(*c, *t)})))
        .collect();
    std::fs::write(out_file, serde_json::to_string_pretty(&json)?)?;
    Ok(table)
}

fn pct(covered: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (covered as f64 * 1000.0 / total as f64).round() / 10.0
    }
}

/// Prints the table; with a baseline, the change per module.
pub fn print(table: &Table, baseline: Option<&Path>) -> anyhow::Result<()> {
    let base: BTreeMap<String, Value> = match baseline {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => BTreeMap::new(),
    };
    println!("line coverage from the smoke run, per module:");
    let (mut c_all, mut t_all) = (0, 0);
    for (module, (c, t)) in table {
        c_all += c;
        t_all += t;
        let before = base.get(module).and_then(|b| b["percent"].as_f64());
        println!("{}", row(module, *c, *t, before));
    }
    println!(
        "  {:<10} {:>5.1}%  {c_all}/{t_all} lines",
        "total",
        pct(c_all, t_all)
    );
    Ok(())
}

/// One line of the table: `module  before% -> now% (+Npp)  covered/lines`.
fn row(module: &str, covered: u64, total: u64, before: Option<f64>) -> String {
    let now = pct(covered, total);
    match before {
        Some(b) => format!(
            "  {module:<10} {b:>5.1}% -> {now:>5.1}% ({:+.1}pp)  {covered}/{total} lines",
            now - b
        ),
        None => format!("  {module:<10} {now:>5.1}%  {covered}/{total} lines"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_show_the_change_against_a_baseline() {
        assert_eq!(
            super::row("hostnat", 641, 1000, Some(14.1)),
            "  hostnat     14.1% ->  64.1% (+50.0pp)  641/1000 lines"
        );
        assert_eq!(
            super::row("cli", 1, 3, None),
            "  cli         33.3%  1/3 lines"
        );
    }

    #[test]
    fn files_map_to_modules() {
        let m = |f: &str| super::module_of(f);
        assert_eq!(
            m("/w/crates/daemon/src/hostnat/rules.rs").as_deref(),
            Some("hostnat")
        );
        assert_eq!(
            m("/w/crates/daemon/src/opstate.rs").as_deref(),
            Some("opstate")
        );
        assert_eq!(
            m("/w/crates/daemon/src/server.rs").as_deref(),
            Some("daemon")
        );
        assert_eq!(
            m("/w/crates/cli/src/commands/vm.rs").as_deref(),
            Some("cli")
        );
        assert_eq!(m("/w/xtask/src/main.rs"), None);
        assert_eq!(m("/w/crates/daemon/tests/api.rs"), None);
    }
}
