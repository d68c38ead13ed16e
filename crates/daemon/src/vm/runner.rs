//! The one way a verb on an existing VM runs: validate the name, find the
//! VM, check its state, take the VM (persisted operation, per-VM
//! exclusion), check again under the lock, do the work, record the result.

use std::sync::Arc;

use banger_api::validate_vm_name;

use super::error::VmError;
use super::record::VmRecord;
use super::service::{VmService, R};
use crate::opstate::{Op, Sink};

/// A state check: Ok when the verb may run on the VM as it is.
pub type Check = fn(&VmRecord) -> R<()>;

impl VmService {
    /// Runs `body` as operation `kind` on VM `name`.
    pub async fn run_op<T>(
        self: &Arc<Self>,
        kind: &str,
        name: &str,
        sink: Option<Sink>,
        check: Check,
        body: impl AsyncFnOnce(&Op, VmRecord) -> R<T>,
    ) -> R<T> {
        validate_vm_name(name)?;
        check(&self.record(name)?)?;
        let op = self.ops.begin(kind, &[name], sink)?;
        let result = async {
            // Another operation may have changed it before we took it.
            let vm = self.record(name)?;
            check(&vm)?;
            body(&op, vm).await
        }
        .await;
        op.finish(&result);
        result
    }
}

/// A check that lets every state through.
pub fn any_state(_: &VmRecord) -> R<()> {
    Ok(())
}

/// The VM must be running.
pub fn running(vm: &VmRecord) -> R<()> {
    match vm.state {
        banger_api::VmState::Running => Ok(()),
        state => Err(VmError::state(
            &vm.name,
            state,
            format!("start it with `banger vm start {}` first", vm.name),
        )),
    }
}
