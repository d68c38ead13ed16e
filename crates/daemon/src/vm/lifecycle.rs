//! Which verb is valid in which state, with the message a user sees when
//! not. These are the checks `run_op` makes before and after taking a VM.

use banger_api::VmState;

use super::error::VmError;
use super::record::VmRecord;
use super::service::R;

fn refuse(vm: &VmRecord, hint: &str) -> VmError {
    VmError::state(&vm.name, vm.state, hint)
}

pub fn can_start(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Stopped | VmState::Error => Ok(()),
        VmState::Running => Err(refuse(vm, "nothing to do")),
        _ => Err(refuse(vm, "wait for it to settle and try again")),
    }
}

pub fn can_stop(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Running => Ok(()),
        VmState::Stopped => Err(refuse(vm, "nothing to do")),
        _ => Err(refuse(vm, "use `banger vm kill` to force it")),
    }
}

/// Kill works on anything that may have a VMM process.
pub fn can_kill(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Stopped => Err(refuse(vm, "nothing to kill")),
        _ => Ok(()),
    }
}

pub fn can_restart(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Running => Ok(()),
        _ => Err(refuse(vm, "use `banger vm start`")),
    }
}

/// Delete without `-f` refuses a VM that may be running.
pub fn can_delete(vm: &VmRecord) -> R<()> {
    match vm.state {
        VmState::Stopped | VmState::Error => Ok(()),
        _ => Err(refuse(
            vm,
            "stop it first, or use `banger vm delete -f` to stop and delete it",
        )),
    }
}

/// Prune takes only VMs that are certainly not running.
pub fn is_prunable(state: VmState) -> bool {
    matches!(state, VmState::Stopped | VmState::Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::{ApiError, ErrorCode, VmSpec};
    use VmState::*;

    fn vm(state: VmState) -> VmRecord {
        let spec = VmSpec {
            name: "a".into(),
            cpus: 1,
            memory_mib: 512,
            disk_gib: 4,
            image: "default".into(),
            nat: false,
            authorized_keys: Vec::new(),
            cold: false,
            disk_strategy: None,
            ..Default::default()
        };
        VmRecord {
            state,
            ..VmRecord::draft(&spec, "qemu", crate::disk::Strategy::Qcow2, 0)
        }
    }

    #[test]
    fn transitions() {
        assert!(can_start(&vm(Stopped)).is_ok());
        assert!(can_start(&vm(Error)).is_ok());
        let refused = ApiError::from(can_start(&vm(Running)).unwrap_err());
        assert_eq!(refused.code, ErrorCode::InvalidState);
        assert!(can_stop(&vm(Running)).is_ok());
        assert!(can_stop(&vm(Stopped)).is_err());
        assert!(can_kill(&vm(Stopping)).is_ok());
        assert!(can_kill(&vm(Stopped)).is_err());
        assert!(can_restart(&vm(Stopped)).is_err());
        assert!(can_delete(&vm(Running)).is_err());
        assert!(can_delete(&vm(Stopped)).is_ok());
        assert!(!is_prunable(Running) && !is_prunable(Creating) && is_prunable(Stopped));
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = can_delete(&vm(Running)).unwrap_err().to_string();
        assert!(e.contains("-f"), "{e}");
        assert!(!e.contains('\n'));
    }
}
