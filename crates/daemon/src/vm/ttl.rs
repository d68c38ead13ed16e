//! VM lifetimes: `vm create --ttl` and `vm set-ttl` store a deadline with
//! the VM (so a daemon restart keeps it); the daemon's housekeeping deletes
//! every VM whose deadline has passed, as `vm delete -f` would. "Now" comes
//! from the host's clock port, so tests move time on.

use std::sync::Arc;

use banger_api::duration::check_ttl;
use banger_api::VmInfo;

use super::caller::Caller;
use super::runner::{self, Claim, OpKind};
use super::service::{VmService, R};
use crate::opstate::Sink;

const SET_TTL: OpKind = OpKind {
    name: "vm_set_ttl",
    check: runner::any_state,
    claim: Claim::Exclusive,
    needs_vmm: false,
};

impl VmService {
    /// `vm set-ttl NAME DURATION|none`: the VM goes `ttl_secs` from now,
    /// or (`None`) lives until deleted.
    pub async fn set_ttl(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        ttl_secs: Option<u64>,
        sink: Option<Sink>,
    ) -> R<VmInfo> {
        banger_api::validate_vm_name(name)?;
        if let Some(t) = ttl_secs {
            check_ttl(t)?;
        }
        self.run_op(SET_TTL, caller, name, sink, async |op, mut vm| {
            vm.expires_at = ttl_secs.map(|t| self.deadline(t));
            self.store.set_expiry(&vm.name, vm.expires_at)?;
            let said = match ttl_secs {
                Some(t) => format!("{} is deleted in {}", vm.name, fmt(t)),
                None => format!("{} has no lifetime", vm.name),
            };
            op.phase("ttl", &said, 100);
            Ok(vm.info())
        })
        .await
    }

    /// The deadline `ttl_secs` from now.
    pub(super) fn deadline(&self, ttl_secs: u64) -> i64 {
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        self.host.clock.now().saturating_add(ttl)
    }

    /// Deletes every VM whose lifetime has ended (as `vm delete -f`: it
    /// wins over an operation holding the VM). A delete that fails is
    /// logged and tried again at the next call. Returns the names deleted.
    pub async fn expire_due(self: &Arc<Self>) -> Vec<String> {
        let now = self.host.clock.now();
        let due = self.due(now);
        self.expire(due, now).await
    }

    /// The VMs whose deadline is `now` or earlier.
    pub(super) fn due(&self, now: i64) -> Vec<Due> {
        match self.store.list_vms() {
            Ok(vms) => vms
                .into_iter()
                .filter(|v| v.expires_at.is_some_and(|t| t <= now))
                .map(|v| Due {
                    name: v.name,
                    created_at: v.created_at,
                })
                .collect(),
            Err(e) => {
                tracing::warn!("listing VMs for expiry: {e}");
                Vec::new()
            }
        }
    }

    /// Deletes the VMs of `due`, one after the other. Each is looked up
    /// again just before: while earlier ones were deleted, its owner may
    /// have deleted it and made a new VM of the same name, which is not due.
    pub(super) async fn expire(self: &Arc<Self>, due: Vec<Due>, now: i64) -> Vec<String> {
        let mut deleted = Vec::new();
        for vm in due {
            if !self.still_due(&vm, now) {
                continue;
            }
            let name = vm.name;
            tracing::info!(vm = %name, "lifetime ended; deleting");
            match self.delete(Caller::ROOT, &name, true, None).await {
                Ok(()) => deleted.push(name),
                Err(e) => tracing::warn!(vm = %name, "deleting at the end of its lifetime: {e}"),
            }
        }
        deleted
    }

    /// `vm` is still the VM that was listed, and still past its deadline.
    fn still_due(&self, vm: &Due, now: i64) -> bool {
        matches!(
            self.store.get_vm(&vm.name),
            Ok(Some(v)) if v.created_at == vm.created_at && v.expires_at.is_some_and(|t| t <= now)
        )
    }
}

/// A VM found past its deadline: its name, and when it was made (a VM made
/// later under the same name is another VM).
#[derive(Debug, Clone)]
pub(super) struct Due {
    pub name: String,
    pub created_at: i64,
}

fn fmt(secs: u64) -> String {
    banger_api::duration::format_left(i64::try_from(secs).unwrap_or(i64::MAX))
}
