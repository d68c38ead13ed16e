//! Firecracker's API calls, as banger makes them: the request bodies, and
//! every answer but a 2xx turned into an error that names the call and
//! carries Firecracker's `fault_message`.

use std::path::Path;

use serde_json::{json, Value};

use super::http;
use crate::vmm::VmmError;

/// The id of the VM's one network interface.
pub const IFACE_ID: &str = "eth0";

/// Calls `method path` with `body`; a non-2xx answer is an error.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<String, VmmError> {
    let text = body.map(Value::to_string);
    let resp =
        http::request(socket, method, path, text.as_deref()).map_err(|source| VmmError::Io {
            what: format!("Firecracker API {method} {path} on {}", socket.display()),
            source,
        })?;
    if (200..300).contains(&resp.status) {
        return Ok(resp.body);
    }
    let fault = serde_json::from_str::<Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("fault_message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| resp.body.trim().to_string());
    Err(VmmError::Control(format!(
        "Firecracker refused {method} {path} ({}): {fault}",
        resp.status
    )))
}

fn put(socket: &Path, path: &str, body: Value) -> Result<(), VmmError> {
    call(socket, "PUT", path, Some(&body)).map(drop)
}

fn patch(socket: &Path, path: &str, body: Value) -> Result<(), VmmError> {
    call(socket, "PATCH", path, Some(&body)).map(drop)
}

pub fn logger(socket: &Path, log_path: &Path) -> Result<(), VmmError> {
    put(
        socket,
        "/logger",
        json!({"log_path": log_path, "level": "Warning", "show_level": true, "show_log_origin": false}),
    )
}

pub fn machine_config(socket: &Path, vcpus: u32, mem_mib: u32) -> Result<(), VmmError> {
    put(
        socket,
        "/machine-config",
        json!({"vcpu_count": vcpus, "mem_size_mib": mem_mib, "smt": false}),
    )
}

pub fn boot_source(
    socket: &Path,
    kernel: &Path,
    initrd: &Path,
    args: &str,
) -> Result<(), VmmError> {
    put(
        socket,
        "/boot-source",
        json!({"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": args}),
    )
}

/// A drive before boot (`PUT /drives/{id}`).
pub fn drive(
    socket: &Path,
    id: &str,
    path: &Path,
    root: bool,
    readonly: bool,
) -> Result<(), VmmError> {
    put(
        socket,
        &format!("/drives/{id}"),
        json!({"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": readonly}),
    )
}

/// Points drive `id` of a running VM at another file (`PATCH /drives/{id}`).
pub fn swap_drive(socket: &Path, id: &str, path: &Path) -> Result<(), VmmError> {
    patch(
        socket,
        &format!("/drives/{id}"),
        json!({"drive_id": id, "path_on_host": path}),
    )
}

pub fn network(socket: &Path, tap: &str, mac: &str) -> Result<(), VmmError> {
    put(
        socket,
        &format!("/network-interfaces/{IFACE_ID}"),
        json!({"iface_id": IFACE_ID, "host_dev_name": tap, "guest_mac": mac}),
    )
}

/// `PUT /actions` with `InstanceStart` or `SendCtrlAltDel`.
pub fn action(socket: &Path, action: &str) -> Result<(), VmmError> {
    put(socket, "/actions", json!({"action_type": action}))
}

/// `PATCH /vm`: `Paused` or `Resumed`.
pub fn vm_state(socket: &Path, state: &str) -> Result<(), VmmError> {
    patch(socket, "/vm", json!({"state": state}))
}

pub fn snapshot_create(socket: &Path, state: &Path, memory: &Path) -> Result<(), VmmError> {
    put(
        socket,
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": memory}),
    )
}

/// Loads a snapshot paused, with the VM's own tap in place of the one it
/// was saved with.
pub fn snapshot_load(
    socket: &Path,
    state: &Path,
    memory: &Path,
    tap: &str,
) -> Result<(), VmmError> {
    put(
        socket,
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": memory},
            "resume_vm": false,
            "network_overrides": [{"iface_id": IFACE_ID, "host_dev_name": tap}],
        }),
    )
}

/// `GET /`: whether the API answers.
pub fn describe(socket: &Path) -> Result<Value, VmmError> {
    let body = call(socket, "GET", "/", None)?;
    serde_json::from_str(&body).map_err(|e| VmmError::Control(format!("GET /: {e}")))
}
