//! The socket server: one JSON request per connection, answered with
//! progress events and one final result. Operations run in their own task,
//! so a client that goes away does not cancel them.

use std::future::Future;
use std::sync::Arc;

use banger_api::{ApiError, ErrorCode, Event, Request};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::guest::ssh;
use crate::opstate::Sink;
use crate::vm::VmService;
use crate::workspace::ops::PrepareRequest;
use crate::workspace::Mode;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

pub async fn serve(
    listener: UnixListener,
    svc: Arc<VmService>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle_connection(stream, svc.clone()));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
        }
    }
}

async fn handle_connection(stream: UnixStream, svc: Arc<VmService>) {
    let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else {
        tracing::warn!("a connection without peer credentials; dropped");
        return;
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            tracing::debug!(uid, ?req, "request");
            let sink = tx.clone();
            tokio::spawn(async move {
                let event = match dispatch(&svc, req, uid, sink.clone()).await {
                    Ok(v) => Event::Ok(v),
                    Err(e) => Event::Error(e),
                };
                let _ = sink.send(event);
            });
        }
        Err(e) => {
            let _ = tx.send(Event::Error(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("malformed request: {e}; is the CLI the same version as the daemon?"),
            )));
        }
    }
    drop(tx);
    while let Some(event) = rx.recv().await {
        let mut text = serde_json::to_string(&event).unwrap_or_default();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            break; // the client left; the operation carries on
        }
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// Runs one request: decode was done, the service decides, the answer is
/// encoded. No business rule lives here.
pub async fn dispatch(
    svc: &Arc<VmService>,
    req: Request,
    caller_uid: u32,
    sink: Sink,
) -> Result<Value, ApiError> {
    let sink = Some(sink);
    match req {
        Request::Ping => {
            Ok(json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()}))
        }
        Request::VmCreate { spec } => to_value(svc.create(spec, caller_uid, sink).await?),
        Request::VmStart { name } => to_value(svc.start(&name, sink).await?),
        Request::VmStop { name } => to_value(svc.stop(&name, sink).await?),
        Request::VmRestart { name } => to_value(svc.restart(&name, sink).await?),
        Request::VmKill { name, signal } => to_value(svc.kill(&name, &signal, sink).await?),
        Request::VmDelete { name, force } => {
            svc.delete(&name, force, sink).await?;
            Ok(json!({"deleted": name}))
        }
        Request::VmPrune { dry_run } => to_value(svc.prune(dry_run, sink).await?),
        Request::VmList => to_value(svc.list().await?),
        Request::VmShow { name } => to_value(svc.show(&name).await?),
        Request::VmSsh { name } => to_value(svc.ssh_info(&name).await?),
        Request::VmLogPath { name } => Ok(json!({"path": svc.console_log_path(&name)?})),
        Request::VmPorts { name } => to_value(svc.ports(&name).await?),
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
            to_value(svc.workspace_prepare(req, sink).await?)
        }
        Request::WorkspaceExport { name, base_commit } => {
            let patch = svc
                .workspace_export(&name, base_commit.as_deref(), sink)
                .await?;
            Ok(json!({"bytes": patch.len(), "patch_base64": BASE64.encode(&patch)}))
        }
        Request::ImageBuild { name } => to_value(svc.image_build(&name, sink).await?),
        Request::ImageList => to_value(svc.image_list()?),
        Request::ImageRm { name } => {
            svc.image_rm(&name)?;
            Ok(json!({"removed": name}))
        }
        Request::OpList => to_value(svc.store.list_ops(50)?),
        Request::SshConfig => {
            let path = ssh::write_ssh_config(svc.layout())?;
            Ok(json!({"path": path, "text": ssh::ssh_config_text(svc.layout())}))
        }
    }
}
