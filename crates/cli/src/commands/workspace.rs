//! `banger workspace prepare|export`: a host repo into a VM at /root/repo,
//! and the guest's work back as a patch.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use banger_api::types::WorkspaceInfo;
use banger_api::{validate_vm_name, Request};
use clap::{Subcommand, ValueEnum};

use crate::rpc;

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Mode {
    /// A read-only image attached to the VM under an overlay (default).
    Overlay,
    /// The repo extracted into the VM's root filesystem.
    FullCopy,
}

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Put a git repo, with its history, at /root/repo in a running VM.
    Prepare {
        vm: String,
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, value_enum, default_value = "overlay")]
        mode: Mode,
        /// Drop every write bit under /root/repo.
        #[arg(long)]
        readonly: bool,
        /// Also copy files .gitignore excludes.
        #[arg(long)]
        include_ignored: bool,
    },
    /// Write the guest's work as a patch `git apply` accepts.
    Export {
        vm: String,
        /// Diff from this commit (guest commits included); default: the
        /// guest's uncommitted changes against its HEAD.
        #[arg(long)]
        base_commit: Option<String>,
        /// Write to FILE instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub fn run(cmd: WorkspaceCommand, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        WorkspaceCommand::Prepare {
            vm,
            repo,
            mode,
            readonly,
            include_ignored,
        } => {
            validate_vm_name(&vm)?;
            let repo = std::fs::canonicalize(&repo)
                .with_context(|| format!("--repo {}: no such directory", repo.display()))?;
            let mode = match mode {
                Mode::Overlay => "overlay",
                Mode::FullCopy => "full_copy",
            };
            let req = Request::WorkspacePrepare {
                name: vm.clone(),
                repo: repo.display().to_string(),
                mode: mode.into(),
                readonly,
                include_ignored,
            };
            let ws: WorkspaceInfo = rpc::call(socket, &req)?;
            eprintln!(
                "{} is at /root/repo in {vm} ({}, HEAD {})",
                ws.source, ws.mode, ws.head
            );
        }
        WorkspaceCommand::Export {
            vm,
            base_commit,
            output,
        } => {
            validate_vm_name(&vm)?;
            let req = Request::WorkspaceExport {
                name: vm,
                base_commit,
            };
            match output {
                Some(path) => export_to_file(socket, &req, &path)?,
                None => {
                    let mut out = std::io::stdout().lock();
                    let _: serde_json::Value =
                        rpc::call_streaming(socket, &req, |chunk| out.write_all(chunk))?;
                    out.flush()?;
                }
            }
        }
    }
    Ok(0)
}

/// Streams the patch into a file beside `path`, renamed over it only when
/// the whole patch arrived: a failed export leaves no half patch.
pub fn export_to_file(socket: &Path, req: &Request, path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?,
    );
    let mut written = 0u64;
    let done: anyhow::Result<serde_json::Value> = rpc::call_streaming(socket, req, |chunk| {
        written += chunk.len() as u64;
        file.write_all(chunk)
    });
    let done = done.and_then(|v| Ok((v, file.flush()?)));
    match done {
        Ok(_) => {
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {written} bytes to {}", path.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
