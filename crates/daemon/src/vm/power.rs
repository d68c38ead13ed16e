//! `vm start`, `vm stop`, `vm restart`, `vm kill`.

use std::sync::Arc;
use std::time::Duration;

use banger_api::{VmInfo, VmState};

use super::caller::Caller;
use super::error::{Context, VmError};
use super::lifecycle;
use super::record::VmRecord;
use super::runner::{Claim, OpKind};
use super::service::{blocking, VmService, R};
use crate::opstate::{Op, Sink};
use crate::vmm::process;

const START: OpKind = OpKind {
    name: "vm_start",
    check: lifecycle::can_start,
    claim: Claim::Exclusive,
    needs_vmm: false,
};
const STOP: OpKind = OpKind {
    name: "vm_stop",
    check: lifecycle::can_stop,
    claim: Claim::Exclusive,
    needs_vmm: false,
};
const RESTART: OpKind = OpKind {
    name: "vm_restart",
    check: lifecycle::can_restart,
    claim: Claim::Exclusive,
    needs_vmm: false,
};
/// Kill always wins: it cancels whatever holds the VM.
const KILL: OpKind = OpKind {
    name: "vm_kill",
    check: lifecycle::can_kill,
    claim: Claim::Preempt,
    needs_vmm: false,
};

impl VmService {
    pub async fn start(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        self.run_op(START, caller, name, sink, async |op, vm| {
            Ok(self.boot(op, vm, 10).await?.info())
        })
        .await
    }

    pub async fn stop(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        self.run_op(STOP, caller, name, sink, async |op, vm| {
            Ok(self.stop_inner(op, vm).await?.info())
        })
        .await
    }

    pub async fn restart(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        self.run_op(RESTART, caller, name, sink, async |op, vm| {
            let vm = self.stop_inner(op, vm).await?;
            Ok(self.boot(op, vm, 50).await?.info())
        })
        .await
    }

    /// Graceful stop: Ctrl-Alt-Del, wait, then SIGKILL. Ends `stopped`; a
    /// stop that fails ends `error` with the reason.
    pub(super) async fn stop_inner(&self, op: &Op, mut vm: VmRecord) -> R<VmRecord> {
        let runtime = vm.runtime;
        self.transition(&mut vm, VmState::Stopping, runtime, None)?;
        match self.shut_down(op, &vm).await {
            Ok(()) => {
                self.transition(&mut vm, VmState::Stopped, None, None)?;
                op.phase("stopped", &format!("{} stopped", vm.name), 100);
                Ok(vm)
            }
            Err(e) => {
                let why = e.to_string();
                if let Err(t) = self.transition(&mut vm, VmState::Error, runtime, Some(&why)) {
                    tracing::warn!(vm = %vm.name, "{t}");
                }
                Err(e)
            }
        }
    }

    async fn shut_down(&self, op: &Op, vm: &VmRecord) -> R<()> {
        if self.is_alive(vm) {
            op.phase("shutdown", "sending Ctrl-Alt-Del", 20);
            let backend = self.backend_of(vm)?;
            let control = self.layout().vm_control_socket(&vm.name);
            let b = backend.clone();
            let graceful = match blocking(move || b.request_shutdown(&control)).await {
                Ok(()) => self.wait_exit(vm, backend.stop_timeout()).await,
                Err(e) => {
                    tracing::warn!(vm = %vm.name, "graceful shutdown request failed: {e}");
                    false
                }
            };
            if !graceful {
                op.phase(
                    "kill",
                    "the guest did not shut down in time; killing the VMM",
                    70,
                );
                self.force_kill(vm).await?;
            }
        }
        self.teardown_runtime(vm).await
    }

    pub async fn kill(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        signal: &str,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        let signo = process::parse_signal(signal).ok_or_else(|| {
            VmError::InvalidArgument(format!(
                "unknown signal {signal:?}; use KILL, TERM, INT, HUP or QUIT"
            ))
        })?;
        self.run_op(KILL, caller, name, sink, async |op, mut vm| {
            if let (Some(handle), true) = (vm.runtime, self.is_alive(&vm)) {
                let sig = signal.trim_start_matches("SIG").to_uppercase();
                op.phase(
                    "signal",
                    &format!("sending SIG{sig} to pid {}", handle.pid),
                    30,
                );
                let backend = self.backend_of(&vm)?;
                blocking(move || backend.signal(&handle, signo))
                    .await
                    .context(|| format!("signalling the VMM of {name}"))?;
                if !self.wait_exit(&vm, Duration::from_secs(20)).await {
                    op.phase(
                        "kill",
                        "still running after the signal; sending SIGKILL",
                        60,
                    );
                    self.force_kill(&vm).await?;
                }
            }
            self.settle_exited(&mut vm, VmState::Stopped).await?;
            Ok(vm.info())
        })
        .await
    }
}
