//! `vm create` with what may come with it: a lifetime (`--ttl`) and a
//! workspace (`--repo`), in one request. Everything is checked before the
//! VM is made (a path that is not a git repo the caller can read makes no
//! VM); a failure after the VM was made deletes it, so the caller gets
//! either a ready VM or none.

use std::sync::Arc;

use banger_api::{VmInfo, VmSpec, WorkspaceSpec};

use super::caller::Caller;
use super::error::VmError;
use super::service::{blocking, VmService, R};
use crate::opstate::Sink;
use crate::workspace::ops::PrepareRequest;
use crate::workspace::reader::Reader;
use crate::workspace::{pack, Mode};

impl VmService {
    /// `vm create [--ttl D] [--repo PATH ...]`.
    pub async fn create_with(
        self: &Arc<Self>,
        mut spec: VmSpec,
        caller: Caller,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        banger_api::validate_vm_name(&spec.name)?;
        if let Some(t) = spec.ttl_secs {
            banger_api::duration::check_ttl(t)?;
        }
        let prepare = match spec.workspace.take() {
            Some(ws) => Some(self.check_workspace(caller, &spec.name, ws).await?),
            None => None,
        };
        let ttl = spec.ttl_secs.take();
        let name = spec.name.clone();
        let mut info = self.create(spec, caller, sink.clone()).await?;
        let finished = self
            .finish_create(caller, &mut info, ttl, prepare, sink)
            .await;
        if let Err(e) = finished {
            if let Err(undo) = self.delete(Caller::ROOT, &name, true, None).await {
                tracing::warn!(vm = %name, "deleting after a failed create: {undo}");
                return Err(e.context(format!(
                    "creating {name} (and it could not be deleted: {undo}; run `banger vm delete -f {name}`)"
                )));
            }
            return Err(e.context(format!("creating {name} (the VM was deleted)")));
        }
        Ok(info)
    }

    /// The lifetime, then the workspace, on a VM just made.
    async fn finish_create(
        self: &Arc<Self>,
        caller: Caller,
        info: &mut VmInfo,
        ttl: Option<u64>,
        prepare: Option<PrepareRequest>,
        sink: Option<Sink>,
    ) -> R<()> {
        if let Some(t) = ttl {
            let at = self.deadline(t);
            self.store.set_expiry(&info.name, Some(at))?;
            info.expires_at = Some(at);
        }
        if let Some(req) = prepare {
            info.workspace = Some(self.workspace_prepare(caller, req, sink).await?);
        }
        Ok(())
    }

    /// Checks a `--repo` before any VM exists: the mode, and that the path
    /// is a git repo the caller can read.
    async fn check_workspace(
        &self,
        caller: Caller,
        vm: &str,
        ws: WorkspaceSpec,
    ) -> R<PrepareRequest> {
        let mode = Mode::parse(&ws.mode).ok_or_else(|| {
            VmError::InvalidArgument(format!(
                "unknown workspace mode {:?}; use overlay or full_copy",
                ws.mode
            ))
        })?;
        let repo = std::path::PathBuf::from(&ws.repo);
        if !repo.is_absolute() {
            return Err(VmError::InvalidArgument(format!(
                "--repo {:?} is not an absolute path; pass the full path",
                ws.repo
            )));
        }
        let reader = Reader::for_caller(caller.uid, caller.gid, &repo);
        let path = repo.clone();
        blocking(move || pack::open(&path, reader)).await?;
        Ok(PrepareRequest {
            vm: vm.to_string(),
            repo,
            mode,
            readonly: ws.readonly,
            include_ignored: ws.include_ignored,
        })
    }
}
