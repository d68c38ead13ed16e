//! One request to the service and back: decode was done, the service
//! decides, the answer is encoded. No business rule lives here.

use std::sync::Arc;

use banger_api::{ApiError, ErrorCode, Request};
use serde_json::{json, Value};

use crate::guest::ssh;
use crate::opstate::Sink;
use crate::vm::{Caller, VmService};
use crate::workspace::ops::PrepareRequest;
use crate::workspace::Mode;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// Runs one request: decode was done, the service decides, the answer is
/// encoded. No business rule lives here.
pub async fn dispatch(
    svc: &Arc<VmService>,
    req: Request,
    caller: Caller,
    sink: Sink,
) -> Result<Value, ApiError> {
    let sink = Some(sink);
    match req {
        Request::Ping => {
            Ok(json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()}))
        }
        Request::VmCreate { spec } => to_value(svc.create_with(spec, caller, sink).await?),
        Request::VmStart { name } => to_value(svc.start(caller, &name, sink).await?),
        Request::VmStop { name } => to_value(svc.stop(caller, &name, sink).await?),
        Request::VmRestart { name } => to_value(svc.restart(caller, &name, sink).await?),
        Request::VmKill { name, signal } => to_value(svc.kill(caller, &name, &signal, sink).await?),
        Request::VmDelete { name, force } => {
            svc.delete(caller, &name, force, sink).await?;
            Ok(json!({"deleted": name}))
        }
        Request::VmPrune { dry_run } => to_value(svc.prune(caller, dry_run, sink).await?),
        Request::VmList => to_value(svc.list(caller).await?),
        Request::VmShow { name } => to_value(svc.show(caller, &name).await?),
        Request::VmSsh { name } => to_value(svc.ssh_info(caller, &name).await?),
        Request::VmLogRead { name, offset } => {
            let (data, next) = svc.console_log_read(caller, &name, offset)?;
            Ok(json!({"data_base64": BASE64.encode(&data), "next_offset": next}))
        }
        Request::KnownHosts => to_value(svc.known_hosts(caller)?),
        Request::VmPorts { name } => to_value(svc.ports(caller, &name).await?),
        Request::WorkspacePrepare {
            name,
            repo,
            mode,
            readonly,
            include_ignored,
        } => {
            let mode = Mode::parse(&mode).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown mode {mode:?}; use overlay or full_copy"),
                )
            })?;
            let req = PrepareRequest {
                vm: name,
                repo: repo.into(),
                mode,
                readonly,
                include_ignored,
            };
            to_value(svc.workspace_prepare(caller, req, sink).await?)
        }
        Request::WorkspaceExport { name, base_commit } => {
            // The patch itself went out as data events.
            let bytes = svc
                .workspace_export(caller, &name, base_commit.as_deref(), sink)
                .await?;
            Ok(json!({ "bytes": bytes }))
        }
        Request::ImageBuild { name, spec } => {
            to_value(svc.image_build(caller, &name, spec, sink).await?)
        }
        Request::ImageCreate { name, from_vm } => {
            to_value(svc.image_create(caller, &name, &from_vm, sink).await?)
        }
        Request::VmSetTtl { name, ttl_secs } => {
            to_value(svc.set_ttl(caller, &name, ttl_secs, sink).await?)
        }
        Request::VmCpIn { .. } => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "vm_cp_in takes its tar as upload frames after the request; use `banger vm cp`",
        )),
        Request::VmCpOut {
            name,
            src,
            contents,
        } => {
            // The tar itself went out as data events.
            let bytes = svc.cp_out(caller, &name, &src, contents, sink).await?;
            Ok(json!({ "bytes": bytes }))
        }
        Request::ImageList => to_value(svc.image_list(caller)?),
        Request::ImageRm { name } => {
            svc.image_rm(caller, &name)?;
            Ok(json!({"removed": name}))
        }
        Request::OpList => to_value(svc.ops_list(caller)?),
        Request::SshConfig => {
            let path = ssh::write_ssh_config(svc.layout())?;
            Ok(json!({"path": path, "text": ssh::ssh_config_text(svc.layout())}))
        }
    }
}
