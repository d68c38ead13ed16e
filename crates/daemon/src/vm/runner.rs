//! The one way a verb on an existing VM runs: validate the name, find the
//! VM, check its state, take the VM (persisted operation, per-VM
//! exclusion, or preemption for `vm kill` and `vm delete -f`), check again
//! under the lock, do the work, record the result. The work ends early when
//! a preempting operation cancels it or, for work inside the guest, when
//! the VMM dies; a VMM found dead afterwards is settled as stopped.

use std::sync::Arc;
use std::time::Duration;

use banger_api::{validate_vm_name, VmState};

use super::caller::Caller;
use super::error::VmError;
use super::record::VmRecord;
use super::service::{VmService, R};
use crate::opstate::{Op, Sink};

/// A state check: Ok when the verb may run on the VM as it is.
pub type Check = fn(&VmRecord) -> R<()>;

/// How an operation takes its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Refused as `busy` while another operation holds the VM.
    Exclusive,
    /// Cancels the operation holding the VM, then takes it.
    Preempt,
    /// Recorded as an operation on the VM but holds nothing: runs beside
    /// others on it, as commands in the guest do (`vm cp`); ends when the
    /// VMM does.
    Shared,
}

/// A verb as the runner sees it.
#[derive(Debug, Clone, Copy)]
pub struct OpKind {
    /// The operation's kind, as `banger ops` lists it.
    pub name: &'static str,
    pub check: Check,
    pub claim: Claim,
    /// The work talks to the guest: it ends as soon as the VMM dies.
    pub needs_vmm: bool,
}

/// How often a running operation looks at its VMM.
const VMM_WATCH: Duration = Duration::from_millis(500);

impl VmService {
    /// Runs `body` as an operation of `kind` on VM `name`.
    pub async fn run_op<T>(
        self: &Arc<Self>,
        kind: OpKind,
        caller: Caller,
        name: &str,
        sink: Option<Sink>,
        body: impl AsyncFnOnce(&Op, VmRecord) -> R<T>,
    ) -> R<T> {
        validate_vm_name(name)?;
        (kind.check)(&self.record_for(caller, name)?)?;
        let op = match kind.claim {
            Claim::Exclusive => self.ops.begin(kind.name, &[name], sink)?,
            Claim::Preempt => self.ops.begin_preempting(kind.name, name, sink).await?,
            Claim::Shared => self.ops.begin_shared(kind.name, name, sink)?,
        };
        let result = async {
            // Another operation may have changed it before we took it.
            let vm = self.record_for(caller, name)?;
            (kind.check)(&vm)?;
            let watched = kind.needs_vmm.then(|| vm.clone());
            tokio::select! {
                done = body(&op, vm) => done,
                reason = op.cancelled() => Err(VmError::Cancelled(format!("{} of {name} was {reason}", kind.name))),
                died = self.vmm_exit(watched) => Err(died),
            }
        }
        .await;
        let result = match result {
            Err(e) => Err(self.after_failure(name, e).await),
            ok => ok,
        };
        op.finish(&result);
        result
    }

    /// Resolves when the VMM of `vm` is gone (never for `None`).
    async fn vmm_exit(&self, vm: Option<VmRecord>) -> VmError {
        let Some(vm) = vm else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(VMM_WATCH).await;
            if !self.is_alive(&vm) {
                return VmError::Failed(format!(
                    "the VMM of {} exited during the operation; `banger vm logs {}` shows its console",
                    vm.name, vm.name
                ));
            }
        }
    }

    /// A VM that the failed work left `running` without a VMM is stopped
    /// (its runtime resources removed), so the next command works.
    async fn after_failure(&self, name: &str, e: VmError) -> VmError {
        if let Ok(mut vm) = self.record(name) {
            if vm.state == VmState::Running && !self.is_alive(&vm) {
                if let Err(t) = self.settle_exited(&mut vm, VmState::Stopped).await {
                    tracing::warn!(vm = %name, "{t}");
                }
            }
        }
        e
    }
}

/// A check that lets every state through.
pub fn any_state(_: &VmRecord) -> R<()> {
    Ok(())
}

/// The VM must be running.
pub fn running(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Running => Ok(()),
        state => Err(VmError::state(
            &vm.name,
            state,
            format!("start it with `banger vm start {}` first", vm.name),
        )),
    }
}
