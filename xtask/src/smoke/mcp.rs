//! `banger mcp` driven by a client nobody here wrote: the official MCP
//! Python SDK (`mcp` from PyPI, pinned), installed into a virtual
//! environment under `target/` on first use, so a fresh machine needs only
//! python3 with its venv module. The client (`mcp_client.py`) lists the
//! tools, creates a VM with a repo, runs commands, exports a patch and
//! deletes the VM, asserting on each answer.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{note, Env, Outcome};

/// The SDK release the scenario is written against.
const SDK: &str = "mcp==2.3.0";
const CLIENT: &str = include_str!("mcp_client.py");
const VM: &str = "smoke-mcp";

/// The virtual environment with the SDK, made when missing; `Err` says
/// why it cannot be (the scenario then skips).
fn venv() -> anyhow::Result<Result<PathBuf, String>> {
    let dir = crate::sh::root().join("target").join("mcp-venv");
    let python = dir.join("bin").join("python");
    let marker = dir.join(format!(".installed-{SDK}"));
    if marker.exists() && python.exists() {
        return Ok(Ok(python));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let made = crate::sh::capture(&["python3", "-m", "venv", dir.to_str().unwrap_or(".")]);
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Ok(Err(format!(
                "python3 cannot make a virtual environment ({}); install python3-venv",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
        Err(e) => {
            return Ok(Err(format!(
                "no python3 ({e:#}); install python3 and python3-venv"
            )))
        }
    }
    let pip = dir.join("bin").join("pip");
    let out = crate::sh::capture(&[
        pip.to_str().unwrap_or("pip"),
        "install",
        "--quiet",
        "--disable-pip-version-check",
        SDK,
    ])?;
    if !out.status.success() {
        return Ok(Err(format!(
            "pip could not install {SDK}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::write(&marker, "")?;
    Ok(Ok(python))
}

pub fn official_client(env: &Env) -> anyhow::Result<Outcome> {
    let python = match venv()? {
        Ok(p) => p,
        Err(why) => return Ok(Outcome::Skip(why)),
    };
    let script = env.dir.join("mcp_client.py");
    std::fs::write(&script, CLIENT)?;
    let (repo, _) = env.host_repo(VM)?;
    let result = drive(env, &python, &script, &repo);
    if result.is_err() {
        // Whatever the client got to, leave no VM behind.
        let _ = env.banger(&["vm", "delete", "-f", VM]);
    }
    result
}

fn drive(env: &Env, python: &Path, script: &Path, repo: &Path) -> anyhow::Result<Outcome> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &env.ns.name])
        .arg(python)
        .arg(script)
        .arg(&env.banger)
        .arg(&env.socket)
        .arg(VM)
        .arg(repo)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running the MCP client")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the official MCP client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("the client's summary: {stdout}"))?;
    note(format!(
        "{SDK}: {} tools; vm_exec exit {}; a {}-byte patch; {} deleted",
        seen["tools"].as_array().map_or(0, |t| t.len()),
        seen["exit_code"],
        seen["patch_bytes"],
        seen["deleted"]
    ));
    Ok(Outcome::Pass)
}
