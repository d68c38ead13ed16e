//! What `vm create` takes beyond the VM's shape: a lifetime (`--ttl`), a
//! workspace prepared in the same request (`--repo`), and `vm set-ttl`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use banger_api::duration::{format_left, parse_ttl};
use banger_api::{validate_vm_name, Request, VmInfo, WorkspaceSpec};
use clap::Args;

use super::workspace::Mode;
use crate::rpc;

#[derive(Args)]
pub struct CreateExtra {
    /// Delete the VM this long after it is ready: 90s, 30m, 2h, 1d.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Also prepare this git repo at /root/repo (as `workspace prepare`);
    /// if that fails, the VM is deleted.
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// How the repo gets in (with --repo).
    #[arg(long, value_enum, requires = "repo")]
    pub mode: Option<Mode>,
    /// Drop every write bit under /root/repo (with --repo).
    #[arg(long, requires = "repo")]
    pub readonly: bool,
}

impl CreateExtra {
    /// The lifetime in seconds and the workspace, checked before anything
    /// is sent.
    pub fn parse(&self) -> anyhow::Result<(Option<u64>, Option<WorkspaceSpec>)> {
        let ttl = self.ttl.as_deref().map(parse_ttl).transpose()?;
        let workspace = match &self.repo {
            Some(repo) => {
                let path = std::fs::canonicalize(repo)
                    .with_context(|| format!("--repo {}: no such directory", repo.display()))?;
                Some(WorkspaceSpec {
                    repo: path.display().to_string(),
                    mode: match self.mode.unwrap_or(Mode::Overlay) {
                        Mode::Overlay => "overlay",
                        Mode::FullCopy => "full_copy",
                    }
                    .into(),
                    readonly: self.readonly,
                    include_ignored: false,
                })
            }
            None => None,
        };
        Ok((ttl, workspace))
    }
}

/// `vm set-ttl NAME DURATION|none`.
pub fn set_ttl(socket: &Path, name: &str, ttl: &str) -> anyhow::Result<i32> {
    validate_vm_name(name)?;
    let ttl_secs = match ttl {
        "none" => None,
        t => Some(parse_ttl(t)?),
    };
    let req = Request::VmSetTtl {
        name: name.to_string(),
        ttl_secs,
    };
    let vm: VmInfo = rpc::call(socket, &req)?;
    match vm.expires_at {
        Some(at) => eprintln!("{} is deleted in {}", vm.name, left(at)),
        None => eprintln!("{} has no lifetime; it stays until deleted", vm.name),
    }
    Ok(0)
}

/// What is left of a lifetime ending at `at`, as `vm list` shows it.
pub fn left(at: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(at);
    format_left(at - now)
}
