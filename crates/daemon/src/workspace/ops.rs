//! `workspace prepare` and `workspace export` as daemon operations.

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::types::WorkspaceInfo;

use super::reader::Reader;
use super::{
    image, pack, scripts, Mode, DRIVE_ID, DRIVE_SERIAL, GUEST_REPO, IMPORT_ID, IMPORT_SERIAL,
};
use crate::opstate::{Op, Sink};
use crate::vm::runner::{self, Claim, OpKind};
use crate::vm::service::{blocking, R};
use crate::vm::{Caller, VmError, VmRecord, VmService};
use crate::vmm::{DiskFormat, Drive, Vmm};

/// What `workspace prepare` was asked.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub vm: String,
    pub repo: PathBuf,
    pub mode: Mode,
    pub readonly: bool,
    pub include_ignored: bool,
}

const PREPARE: OpKind = OpKind {
    name: "workspace_prepare",
    check: prepare_allowed,
    claim: Claim::Exclusive,
    needs_vmm: true,
};
const EXPORT: OpKind = OpKind {
    name: "workspace_export",
    check: export_allowed,
    claim: Claim::Exclusive,
    needs_vmm: true,
};

/// How long one workspace step in the guest may take (extracting or
/// diffing a large repo under emulation takes minutes).
const SCRIPT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(900);

/// Runs `script` in the guest with `sh -s -- ARGS`; non-zero is an error
/// carrying the script's last stderr line (exit 3: the caller's mistake).
async fn guest_script(svc: &VmService, vm: &VmRecord, script: &str, args: &[&str]) -> R<Vec<u8>> {
    let out = guest_output(svc, vm, script, args).await?;
    script_result(vm, out.status, &out.stderr)?;
    Ok(out.stdout)
}

/// Runs `script` in the guest with `sh -s -- ARGS`, whatever its exit.
async fn guest_output(
    svc: &VmService,
    vm: &VmRecord,
    script: &str,
    args: &[&str],
) -> R<std::process::Output> {
    let stdin = Some(script.as_bytes().to_vec());
    svc.guest_exec(vm, &script_command(args), stdin, SCRIPT_DEADLINE)
        .await
}

/// Whether a script that makes a workspace refused because the guest
/// already has a /root/repo ([`scripts::CHECK_FREE`]).
fn refused(out: &std::process::Output) -> bool {
    out.status.code() == Some(scripts::EXIT_TAKEN)
}

/// The error for a guest that already has a /root/repo.
fn taken(vm: &VmRecord) -> VmError {
    VmError::InUse(format!(
        "in {}: {GUEST_REPO} already exists in the guest; this VM already has a {GUEST_REPO}",
        vm.name
    ))
}

/// `sh -s -- ARGS`, the command a script runs as.
fn script_command(args: &[&str]) -> String {
    let mut command = String::from("sh -s --");
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    command
}

/// A script's exit as an error carrying its last stderr line (exit 3: the
/// caller's mistake).
pub(crate) fn script_result(
    vm: &VmRecord,
    status: std::process::ExitStatus,
    stderr: &[u8],
) -> R<()> {
    if status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(stderr);
    // (Dots are a waiting script's heartbeat.)
    let last = stderr
        .trim()
        .lines()
        .rfind(|l| l.trim() != ".")
        .unwrap_or("")
        .trim_start_matches("banger: ")
        .to_string();
    let message = if last.is_empty() {
        format!(
            "in {}: the step in the guest failed ({status}) and said nothing",
            vm.name
        )
    } else {
        format!("in {}: {last}", vm.name)
    };
    Err(if status.code() == Some(3) {
        VmError::InvalidArgument(message)
    } else {
        VmError::Failed(message)
    })
}

/// Runs the export script, streaming the patch to the client through `op`
/// chunk by chunk; returns its size.
async fn stream_export(svc: &VmService, op: &Op, vm: &VmRecord, base: &str) -> R<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let command = script_command(&[base]);
    let stdin = Some(scripts::EXPORT.as_bytes().to_vec());
    let run = svc.guest_exec_stream(vm, &command, stdin, tx, SCRIPT_DEADLINE);
    let forward = async {
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            if !op.data(&chunk).await {
                return Err(VmError::Failed("the client left during the export".into()));
            }
            sent += chunk.len() as u64;
        }
        Ok(sent)
    };
    let (ended, sent) = tokio::join!(run, forward);
    let (status, stderr) = ended?;
    script_result(vm, status, &stderr)?;
    // What the export looked at: the changes alone, or every file and why.
    let stderr = String::from_utf8_lossy(&stderr);
    if let Some(note) = stderr
        .lines()
        .find_map(|l| l.strip_prefix("banger: export looked at"))
    {
        tracing::info!(vm = %vm.name, "export looked at{note}");
    }
    sent
}

/// Attaches `drive` as `id` through the backend, off the async workers.
async fn attach(
    backend: &Arc<dyn Vmm>,
    control: &std::path::Path,
    id: &'static str,
    drive: Drive,
) -> R<()> {
    let (b, c) = (backend.clone(), control.to_path_buf());
    Ok(blocking(move || b.attach_drive(&c, id, &drive)).await?)
}

/// Detaches drive `id`; a failure is logged (the drive goes with the VMM).
async fn detach(backend: &Arc<dyn Vmm>, control: &std::path::Path, id: &'static str, vm: &str) {
    let (b, c) = (backend.clone(), control.to_path_buf());
    if let Err(e) = blocking(move || b.detach_drive(&c, id)).await {
        tracing::warn!(vm = %vm, "detaching the {id} drive: {e}");
    }
}

impl VmService {
    pub async fn workspace_prepare(
        self: &Arc<Self>,
        caller: Caller,
        req: PrepareRequest,
        sink: Option<Sink>,
    ) -> R<WorkspaceInfo> {
        banger_api::validate_vm_name(&req.vm)?;
        let repo_path = req.repo.clone();
        let reader = Reader::for_caller(caller.uid, caller.gid, &repo_path);
        let repo = blocking(move || pack::open(&repo_path, reader)).await?;
        self.refresh_all().await;
        let name = req.vm.clone();
        self.run_op(PREPARE, caller, &name, sink, async |op, vm| {
            self.prepare_inner(op, &vm, &req, repo).await
        })
        .await
    }

    async fn prepare_inner(
        self: &Arc<Self>,
        op: &Op,
        vm: &VmRecord,
        req: &PrepareRequest,
        repo: pack::Repo,
    ) -> R<WorkspaceInfo> {
        let l = self.layout().clone();
        let tar_path = l.vm_dir(&vm.name).join("workspace.tar");
        let image = l.vm_workspace_image(&vm.name);
        op.phase(
            "pack",
            &format!("packing {} ({})", repo.root.display(), req.mode.as_str()),
            10,
        );
        let (mode, readonly, include_ignored) = (req.mode, req.readonly, req.include_ignored);
        let (repo2, tar2, image2) = (repo.clone(), tar_path.clone(), image.clone());
        let packing = blocking(move || -> Result<(), super::WorkspaceError> {
            let list = pack::file_list(&repo2, include_ignored)?;
            match mode {
                Mode::Overlay => image::build(&repo2, &list, readonly, include_ignored, &image2),
                Mode::FullCopy => pack::tar(&repo2, &list, readonly, &tar2),
            }
        });
        // Overlay: the guest's side starts at once (its SSH session, the
        // check that /root/repo is free) and waits for the drive while the
        // host packs. Dropped unfinished, it ends having made nothing.
        let script = scripts::first_mount_overlay(DRIVE_SERIAL);
        let mut mount = std::pin::pin!(guest_output(self, vm, &script, &[]));
        let mut mounted = None;
        let packed = match mode {
            Mode::FullCopy => packing.await,
            Mode::Overlay => {
                let mut packing = std::pin::pin!(packing);
                loop {
                    tokio::select! {
                        p = &mut packing => break p,
                        m = &mut mount, if mounted.is_none() => mounted = Some(m),
                    }
                }
            }
        };
        let refused_early = matches!(&mounted, Some(Ok(out)) if refused(out));
        let ready = match packed {
            Err(e) => Err(e.into()),
            Ok(()) if refused_early => Err(taken(vm)),
            Ok(()) => self.hand_over_packed(vm, &[&image, &tar_path]).await,
        };
        if let Err(e) = ready {
            // A guest that mounted already (only a stale drive lets it) is
            // put back as it was.
            if matches!(&mounted, Some(Ok(out)) if out.status.success()) {
                self.undo_overlay(vm).await;
            }
            let _ = std::fs::remove_file(&tar_path);
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        let backend = self.backend_of(vm)?;
        let control = l.vm_control_socket(&vm.name);
        match req.mode {
            Mode::Overlay => {
                op.phase("attach", "attaching the workspace image", 50);
                let drive = self.overlay_drive(&vm.name);
                if let Err(e) = attach(&backend, &control, DRIVE_ID, drive).await {
                    if matches!(&mounted, Some(Ok(out)) if out.status.success()) {
                        self.undo_overlay(vm).await;
                    }
                    let _ = std::fs::remove_file(&image);
                    return Err(e);
                }
                op.phase(
                    "mount",
                    &format!("mounting the overlay at {GUEST_REPO}"),
                    70,
                );
                let out = match mounted {
                    Some(m) => m,
                    None => mount.await,
                };
                let mounted = match out {
                    Ok(out) if refused(&out) => Err(None),
                    Ok(out) => script_result(vm, out.status, &out.stderr).map_err(Some),
                    Err(e) => Err(Some(e)),
                };
                if let Err(e) = mounted {
                    // Leave nothing half-made: a retry must find the VM as
                    // before. A guest that refused made nothing.
                    if e.is_some() {
                        self.undo_overlay(vm).await;
                    }
                    detach(&backend, &control, DRIVE_ID, &vm.name).await;
                    let _ = std::fs::remove_file(&image);
                    return Err(e.unwrap_or_else(|| taken(vm)));
                }
            }
            Mode::FullCopy => {
                op.phase("attach", "attaching the repo tar", 40);
                let drive = Drive {
                    path: tar_path.clone(),
                    format: DiskFormat::Raw,
                    readonly: true,
                    serial: IMPORT_SERIAL.into(),
                };
                let extracted = match attach(&backend, &control, IMPORT_ID, drive).await {
                    Ok(()) => {
                        op.phase("extract", &format!("extracting into {GUEST_REPO}"), 60);
                        let script = scripts::extract_full_copy(IMPORT_SERIAL, req.readonly);
                        match guest_output(self, vm, &script, &[]).await {
                            Ok(out) if refused(&out) => Err(taken(vm)),
                            Ok(out) => script_result(vm, out.status, &out.stderr),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                detach(&backend, &control, IMPORT_ID, &vm.name).await;
                let _ = std::fs::remove_file(&tar_path);
                extracted?;
            }
        }
        let info = WorkspaceInfo {
            mode: req.mode.as_str().into(),
            head: repo.head.clone().unwrap_or_else(|| "(no commits)".into()),
            readonly: req.readonly,
            source: repo.root.display().to_string(),
        };
        self.store.set_workspace(&vm.name, Some(&info))?;
        op.phase("ready", &format!("{GUEST_REPO} ready in {}", vm.name), 100);
        Ok(info)
    }

    /// Gives the packed files that exist to the VMM's own uid (an
    /// unprivileged VMM opens a drive itself when it attaches it).
    async fn hand_over_packed(&self, vm: &VmRecord, packed: &[&PathBuf]) -> R<()> {
        let Some((uid, gid)) = self.vmm_identity(vm) else {
            return Ok(());
        };
        let packed: Vec<PathBuf> = packed
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.to_path_buf())
            .collect();
        let provision = self.host.provision.clone();
        Ok(blocking(move || provision.hand_over(&packed, uid, gid)).await?)
    }

    /// Unmounts and removes what a mount script made (a failure is logged).
    async fn undo_overlay(&self, vm: &VmRecord) {
        if let Err(undo) = guest_script(self, vm, scripts::UNDO_OVERLAY, &[]).await {
            tracing::warn!(vm = %vm.name, "undoing the overlay: {undo}");
        }
    }

    /// Remounts an overlay workspace after a boot.
    pub async fn remount_workspace(&self, vm: &VmRecord) -> R<()> {
        match &vm.workspace {
            Some(ws) if ws.mode == Mode::Overlay.as_str() => {
                guest_script(self, vm, &scripts::mount_overlay(DRIVE_SERIAL), &[]).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The workspace drive a VM boots with (overlay mode only).
    pub fn workspace_drive(&self, vm: &VmRecord) -> Option<Drive> {
        let ws = vm.workspace.as_ref()?;
        (ws.mode == Mode::Overlay.as_str()).then(|| self.overlay_drive(&vm.name))
    }

    /// The read-only image an overlay workspace mounts as its lower layer.
    fn overlay_drive(&self, vm: &str) -> Drive {
        Drive {
            path: self.layout().vm_workspace_image(vm),
            format: DiskFormat::Raw,
            readonly: true,
            serial: DRIVE_SERIAL.into(),
        }
    }

    /// Streams the patch of the guest's work to the client (through the
    /// operation's events), chunk by chunk; returns its size in bytes.
    pub async fn workspace_export(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        base: Option<&str>,
        sink: Option<Sink>,
    ) -> R<u64> {
        banger_api::validate_vm_name(name)?;
        if let Some(b) = base {
            if b.len() < 4 || b.len() > 64 || !b.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(VmError::InvalidArgument(format!(
                    "--base-commit {b:?} is not a commit id; pass a hex SHA such as the output of `git rev-parse HEAD`"
                )));
            }
        }
        self.refresh_all().await;
        self.run_op(EXPORT, caller, name, sink, async |op, vm| {
            op.phase("diff", "computing the patch in the guest", 20);
            stream_export(self, op, &vm, base.unwrap_or("")).await
        })
        .await
    }
}

/// Prepare needs a running VM without a workspace.
fn prepare_allowed(vm: &VmRecord) -> R<()> {
    runner::running(vm)?;
    match &vm.workspace {
        Some(ws) => Err(already_prepared(&vm.name, ws)),
        None => Ok(()),
    }
}

/// Export needs a workspace in a running VM.
fn export_allowed(vm: &VmRecord) -> R<()> {
    if vm.workspace.is_none() {
        return Err(VmError::Lacks(format!(
            "VM {:?} has no workspace; create one with `banger workspace prepare {} --repo PATH`",
            vm.name, vm.name
        )));
    }
    runner::running(vm)
}

fn already_prepared(name: &str, ws: &WorkspaceInfo) -> VmError {
    VmError::Exists(format!(
        "VM {name:?} already has a workspace ({} of {} at {}); export your work and use a fresh VM for another",
        ws.mode, ws.source, ws.head
    ))
}
