//! What each MCP tool does, as plain blocking functions over the same
//! code the CLI verbs run (so the same validation and the same one-line
//! errors), talking to the daemon's socket as the user who runs `banger
//! mcp`. Each returns a JSON object for the tool's structured answer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use banger_api::{validate_vm_name, Request, VmInfo, VmSpec, WorkspaceSpec};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::commands::exec::ExecOptions;
use crate::commands::{cp, vm};
use crate::rpc;

/// The most of a command's stdout or stderr (and of a patch) an answer
/// carries; more is cut, and the answer says so.
pub const OUTPUT_CAP: usize = 1 << 20;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateParams {
    /// The VM's name: a DNS label (a-z, 0-9, '-', 1-32 characters, no '-' at either end).
    pub name: String,
    /// Let the guest reach beyond the host (NAT). Default false.
    #[serde(default)]
    pub nat: bool,
    /// Virtual CPUs. Default 1.
    pub cpus: Option<u32>,
    /// Memory in MiB. Default 1024.
    pub memory_mib: Option<u32>,
    /// Root disk in GiB. Default 4.
    pub disk_gib: Option<u32>,
    /// Guest image. Default "default".
    pub image: Option<String>,
    /// A git repo on the host (absolute path) to put at /root/repo in the guest.
    pub repo: Option<String>,
    /// How the repo goes in: "overlay" (default) or "full_copy".
    pub mode: Option<String>,
    /// Drop every write bit under /root/repo.
    #[serde(default)]
    pub readonly: bool,
}

/// Creates a VM (and prepares a workspace from `repo`); a failed prepare
/// deletes the VM again, so a failure leaves no VM.
pub fn create(socket: &Path, p: CreateParams) -> anyhow::Result<Value> {
    validate_vm_name(&p.name)?;
    let mode = p.mode.as_deref().unwrap_or("overlay");
    if !matches!(mode, "overlay" | "full_copy") {
        bail!("mode {mode:?}: use overlay or full_copy");
    }
    let repo = match &p.repo {
        Some(r) => Some(absolute(r, "repo")?),
        None => None,
    };
    let spec = VmSpec {
        name: p.name.clone(),
        cpus: p.cpus.unwrap_or(1),
        memory_mib: p.memory_mib.unwrap_or(1024),
        disk_gib: p.disk_gib.unwrap_or(4),
        image: p.image.unwrap_or_else(|| "default".into()),
        nat: p.nat,
        // One step: a prepare that fails deletes the VM (the daemon does).
        workspace: repo.map(|r| WorkspaceSpec {
            repo: r.display().to_string(),
            mode: mode.into(),
            readonly: p.readonly,
            include_ignored: false,
        }),
        ..VmSpec::default()
    };
    let vm = vm::create(socket, spec)?;
    Ok(json!({ "workspace": vm.workspace, "vm": vm }))
}

/// A host path given to a tool: absolute (the server's working directory
/// is not the agent's), canonical when it exists.
fn absolute(path: &str, what: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        bail!("{what} {path:?} is not an absolute path; give the full path on the host");
    }
    std::fs::canonicalize(p).with_context(|| format!("{what} {path}: no such file or directory"))
}

pub fn list(socket: &Path) -> anyhow::Result<Value> {
    let vms: Vec<VmInfo> = rpc::call(socket, &Request::VmList)?;
    Ok(json!({ "vms": vms }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecParams {
    /// The VM's name.
    pub name: String,
    /// The command and its arguments (argv; no shell unless you run one, e.g. ["sh", "-c", "make test"]).
    pub command: Vec<String>,
    /// Run it in this directory of the guest (e.g. /root/repo).
    pub workdir: Option<String>,
    /// Variables to set, NAME -> value.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text fed to the command's stdin (none by default).
    pub stdin: Option<String>,
    /// Seconds before the command is killed. Default 600, at most 3600.
    pub timeout_secs: Option<u64>,
}

/// Runs a command over SSH as `vm exec` does; its exit code is part of the
/// answer (not a tool error).
pub fn exec(socket: &Path, p: ExecParams) -> anyhow::Result<Value> {
    validate_vm_name(&p.name)?;
    if p.command.is_empty() {
        bail!("command is empty; give argv such as [\"uname\", \"-a\"]");
    }
    // Each key is a whole name: `A=B` must not turn into A with "B=...".
    if let Some(k) = p.env.keys().find(|k| k.contains('=')) {
        bail!("env {k:?} is not a variable name; use letters, digits and _, not starting with a digit");
    }
    let env: Vec<String> = p.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let opts = ExecOptions::new(p.workdir, &env, p.stdin.is_some(), false, |_| None)?;
    let timeout = Duration::from_secs(p.timeout_secs.unwrap_or(600).clamp(1, 3600));
    let info = vm::ssh_info(socket, &p.name)?;
    let mut c = vm::ssh_command(&info, true);
    c.args(opts.ssh_flags())
        .arg(opts.remote_command(&p.command))
        .stdin(if p.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("running ssh")?;
    if let (Some(text), Some(mut pipe)) = (p.stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let out = child.stdout.take().map(capture);
    let err = child.stderr.take().map(capture);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, cut_out) = out.map(joined).unwrap_or_default();
    let (stderr, cut_err) = err.map(joined).unwrap_or_default();
    let Some(status) = status else {
        bail!(
            "the command ran past {}s and was killed; raise timeout_secs or run it in the background",
            timeout.as_secs()
        );
    };
    Ok(json!({
        "exit_code": status.code(),
        "stdout": stdout,
        "stderr": stderr,
        "truncated": cut_out || cut_err,
    }))
}

/// Reads a pipe to its end in a thread, keeping at most [`OUTPUT_CAP`].
fn capture(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        let mut cut = false;
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_CAP.saturating_sub(kept.len());
            cut |= n > room;
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        (kept, cut)
    })
}

fn joined(h: std::thread::JoinHandle<(Vec<u8>, bool)>) -> (String, bool) {
    let (bytes, cut) = h.join().unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), cut)
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CpParams {
    /// The VM's name.
    pub name: String,
    /// "to_vm" (host_path into the guest) or "from_vm" (vm_path out to the host).
    pub direction: String,
    /// An absolute path on the host, read or written with the rights of the user running `banger mcp`.
    pub host_path: String,
    /// A path in the guest (relative paths start at /root); DIR/. means a directory's contents.
    pub vm_path: String,
}

/// `vm cp` in either direction; modes and symlinks kept.
pub fn cp(socket: &Path, p: CpParams) -> anyhow::Result<Value> {
    validate_vm_name(&p.name)?;
    if !Path::new(&p.host_path).is_absolute() {
        bail!(
            "host_path {:?} is not an absolute path; give the full path on the host",
            p.host_path
        );
    }
    let said = match p.direction.as_str() {
        "to_vm" => cp::copy_in(socket, &p.host_path, &p.name, &p.vm_path)?,
        "from_vm" => cp::copy_out(socket, &p.name, &p.vm_path, &p.host_path)?,
        other => bail!("direction {other:?}: use to_vm or from_vm"),
    };
    Ok(json!({ "copied": said }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExportParams {
    /// The VM's name (it must have a workspace).
    pub name: String,
    /// Diff from this commit (guest commits included); default: uncommitted changes against the guest's HEAD.
    pub base_commit: Option<String>,
    /// Write the patch to this absolute host path instead of answering it.
    pub output_path: Option<String>,
}

/// The guest's work as a patch `git apply` accepts.
pub fn export(socket: &Path, p: ExportParams) -> anyhow::Result<Value> {
    validate_vm_name(&p.name)?;
    let req = Request::WorkspaceExport {
        name: p.name,
        base_commit: p.base_commit,
    };
    if let Some(path) = p.output_path {
        let path = Path::new(&path);
        if !path.is_absolute() {
            bail!("output_path {path:?} is not an absolute path; give the full path on the host");
        }
        crate::commands::workspace::export_to_file(socket, &req, path)?;
        return Ok(json!({ "written": path }));
    }
    let mut patch = Vec::new();
    let mut total = 0u64;
    let _: Value = rpc::call_streaming(socket, &req, |chunk| {
        total += chunk.len() as u64;
        let room = OUTPUT_CAP.saturating_sub(patch.len());
        patch.extend_from_slice(&chunk[..chunk.len().min(room)]);
        Ok(())
    })?;
    if total as usize > patch.len() {
        bail!(
            "the patch is {total} bytes, more than an answer carries ({OUTPUT_CAP}); pass output_path to write it to a file"
        );
    }
    Ok(json!({ "patch": String::from_utf8_lossy(&patch), "bytes": total }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NameParams {
    /// The VM's name.
    pub name: String,
}

pub fn stop(socket: &Path, p: NameParams) -> anyhow::Result<Value> {
    validate_vm_name(&p.name)?;
    let vm: VmInfo = rpc::call(socket, &Request::VmStop { name: p.name })?;
    Ok(json!({ "vm": vm }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteParams {
    /// The VM's name.
    pub name: String,
    /// Stop a running VM first (default false: a running VM is refused).
    #[serde(default)]
    pub force: bool,
}

pub fn delete(socket: &Path, p: DeleteParams) -> anyhow::Result<Value> {
    validate_vm_name(&p.name)?;
    let _: Value = rpc::call(
        socket,
        &Request::VmDelete {
            name: p.name.clone(),
            force: p.force,
        },
    )?;
    Ok(json!({ "deleted": p.name }))
}
