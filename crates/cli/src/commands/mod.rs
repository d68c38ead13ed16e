//! One module per verb group; each is a thin layer over the daemon's API.

pub mod cp;
pub mod daemon;
pub mod docs;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod sshconfig;
pub mod untar;
pub mod vm;
pub mod vmcreate;
pub mod workspace;

use std::path::Path;

use banger_api::{OpInfo, Request};

use crate::output;

pub fn ops(socket: &Path, json: bool) -> anyhow::Result<i32> {
    let ops: Vec<OpInfo> = crate::rpc::call(socket, &Request::OpList)?;
    if json {
        output::print_json(&ops)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            vec![
                o.id.clone(),
                o.kind.clone(),
                o.vm.clone().unwrap_or_default(),
                format!("{:?}", o.state).to_lowercase(),
                o.phase.clone(),
                output::age(o.started_at),
                o.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &["ID", "KIND", "VM", "STATE", "PHASE", "STARTED", "ERROR"],
        &rows,
    );
    Ok(0)
}
