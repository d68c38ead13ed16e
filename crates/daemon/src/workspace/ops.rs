//! `workspace prepare` and `workspace export` as daemon operations.

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::types::WorkspaceInfo;
use banger_api::{ApiError, ErrorCode, VmInfo, VmState};

use super::{pack, scripts, Mode, DRIVE_SERIAL, GUEST_REPO};
use crate::guest::ssh;
use crate::opstate::{Op, Sink};
use crate::vm::VmService;
use crate::vmm::Drive;

type R<T> = Result<T, ApiError>;

/// What `workspace prepare` was asked.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub vm: String,
    pub repo: PathBuf,
    pub mode: Mode,
    pub readonly: bool,
    pub include_ignored: bool,
}

/// The id the workspace drive has in the VMM.
pub const DRIVE_ID: &str = "workspace";
const IMPORT_SERIAL: &str = "banger-ws-import";

fn invalid(e: super::WorkspaceError) -> ApiError {
    match e {
        super::WorkspaceError::Invalid(m) => ApiError::new(ErrorCode::InvalidArgument, m),
        super::WorkspaceError::Cmd(c) => c.into(),
        other => ApiError::internal(other.to_string()),
    }
}

fn must_run(vm: &VmInfo, verb: &str) -> R<()> {
    if vm.state != VmState::Running {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            format!(
                "VM {:?} is {}; start it with `banger vm start {}` before {verb}",
                vm.name, vm.state, vm.name
            ),
        ));
    }
    Ok(())
}

/// Runs `script` in the guest with `sh -s -- ARGS`; non-zero is an error
/// carrying the script's last stderr line.
async fn guest_script(svc: &VmService, vm: &VmInfo, script: &str, args: &[&str]) -> R<Vec<u8>> {
    let mut command = String::from("sh -s --");
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let out = ssh::exec(
        svc.layout(),
        &vm.ip,
        &command,
        Some(script.as_bytes().to_vec()),
    )
    .await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .trim_start_matches("banger: ")
            .to_string();
        return Err(ApiError::new(
            if out.status.code() == Some(3) {
                ErrorCode::NotFound
            } else {
                ErrorCode::Internal
            },
            format!("in {}: {last}", vm.name),
        ));
    }
    Ok(out.stdout)
}

impl VmService {
    pub async fn workspace_prepare(
        self: &Arc<Self>,
        req: PrepareRequest,
        sink: Option<Sink>,
    ) -> R<WorkspaceInfo> {
        banger_api::validate_vm_name(&req.vm)?;
        let vm = self.show(&req.vm)?;
        must_run(&vm, "preparing a workspace")?;
        let repo_path = req.repo.clone();
        let repo = tokio::task::spawn_blocking(move || pack::open(&repo_path))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(invalid)?;
        if let Some(ws) = &vm.workspace {
            return Err(already_prepared(&vm.name, ws));
        }
        let op = self.ops.begin("workspace_prepare", &[&req.vm], sink)?;
        let result = self.prepare_inner(&op, &vm, &req, repo).await;
        op.finish(&result);
        result
    }

    async fn prepare_inner(
        self: &Arc<Self>,
        op: &Op,
        vm: &VmInfo,
        req: &PrepareRequest,
        repo: pack::Repo,
    ) -> R<WorkspaceInfo> {
        guest_script(self, vm, scripts::CHECK_FREE, &[])
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidState,
                    format!("{}; this VM already has a {GUEST_REPO}", e.message),
                )
            })?;
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
        let packed = tokio::task::spawn_blocking(move || -> Result<(), super::WorkspaceError> {
            let list = pack::file_list(&repo2, include_ignored)?;
            let entries = list.iter().filter(|b| **b == 0).count();
            pack::tar(&repo2, &list, readonly, &tar2)?;
            if mode == Mode::Overlay {
                let built = pack::ext4_from_tar(&tar2, entries, readonly, &image2);
                let _ = std::fs::remove_file(&tar2);
                built?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
        .and_then(|r| r.map_err(invalid));
        if let Err(e) = packed {
            let _ = std::fs::remove_file(&tar_path);
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        let backend = self.backend_of(vm)?;
        let control = l.vm_control_socket(&vm.name);
        match req.mode {
            Mode::Overlay => {
                op.phase("attach", "attaching the workspace image", 50);
                if let Err(e) =
                    backend.attach_drive(&control, DRIVE_ID, &self.overlay_drive(&vm.name))
                {
                    let _ = std::fs::remove_file(&image);
                    return Err(e.into());
                }
                op.phase(
                    "mount",
                    &format!("mounting the overlay at {GUEST_REPO}"),
                    70,
                );
                if let Err(e) =
                    guest_script(self, vm, &scripts::mount_overlay(DRIVE_SERIAL), &[]).await
                {
                    // Leave nothing half-made: a retry must find the VM as before.
                    if let Err(undo) = guest_script(self, vm, scripts::UNDO_OVERLAY, &[]).await {
                        tracing::warn!(vm = %vm.name, "undoing the overlay: {}", undo.message);
                    }
                    if let Err(d) = backend.detach_drive(&control, DRIVE_ID) {
                        tracing::warn!(vm = %vm.name, "detaching the workspace drive: {d}");
                    }
                    let _ = std::fs::remove_file(&image);
                    return Err(e);
                }
            }
            Mode::FullCopy => {
                op.phase("attach", "attaching the repo tar", 40);
                let drive = Drive {
                    path: tar_path.clone(),
                    format: "raw".into(),
                    readonly: true,
                    serial: IMPORT_SERIAL.into(),
                };
                let attached = backend.attach_drive(&control, "import", &drive);
                let extracted = match attached {
                    Ok(()) => {
                        op.phase("extract", &format!("extracting into {GUEST_REPO}"), 60);
                        guest_script(
                            self,
                            vm,
                            &scripts::extract_full_copy(IMPORT_SERIAL, req.readonly),
                            &[],
                        )
                        .await
                    }
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = backend.detach_drive(&control, "import") {
                    tracing::warn!(vm = %vm.name, "detaching the import drive: {e}");
                }
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

    /// Remounts an overlay workspace after a boot.
    pub async fn remount_workspace(&self, vm: &VmInfo) -> R<()> {
        match &vm.workspace {
            Some(ws) if ws.mode == Mode::Overlay.as_str() => {
                guest_script(self, vm, &scripts::mount_overlay(DRIVE_SERIAL), &[]).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The workspace drive a VM boots with (overlay mode only).
    pub fn workspace_drive(&self, vm: &VmInfo) -> Option<Drive> {
        let ws = vm.workspace.as_ref()?;
        (ws.mode == Mode::Overlay.as_str()).then(|| self.overlay_drive(&vm.name))
    }

    /// The read-only image an overlay workspace mounts as its lower layer.
    fn overlay_drive(&self, vm: &str) -> Drive {
        Drive {
            path: self.layout().vm_workspace_image(vm),
            format: "raw".into(),
            readonly: true,
            serial: DRIVE_SERIAL.into(),
        }
    }

    /// The patch (raw bytes) of the guest's work.
    pub async fn workspace_export(
        self: &Arc<Self>,
        name: &str,
        base: Option<&str>,
        sink: Option<Sink>,
    ) -> R<Vec<u8>> {
        banger_api::validate_vm_name(name)?;
        if let Some(b) = base {
            if b.len() < 4 || b.len() > 64 || !b.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("--base-commit {b:?} is not a commit id; pass a hex SHA such as the output of `git rev-parse HEAD`"),
                ));
            }
        }
        let vm = self.show(name)?;
        if vm.workspace.is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("VM {name:?} has no workspace; create one with `banger workspace prepare {name} --repo PATH`"),
            ));
        }
        must_run(&vm, "exporting")?;
        let op = self.ops.begin("workspace_export", &[name], sink)?;
        op.phase("diff", "computing the patch in the guest", 20);
        let result = guest_script(self, &vm, scripts::EXPORT, &[base.unwrap_or("")]).await;
        op.finish(&result);
        result
    }
}

fn already_prepared(name: &str, ws: &WorkspaceInfo) -> ApiError {
    ApiError::new(
        ErrorCode::AlreadyExists,
        format!(
            "VM {name:?} already has a workspace ({} of {} at {}); export your work and use a fresh VM for another",
            ws.mode, ws.source, ws.head
        ),
    )
}
