//! Which verb is valid in which state, with the message a user sees when not.

use banger_api::{ApiError, ErrorCode, VmState};

fn refuse(name: &str, state: VmState, hint: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        format!("VM {name:?} is {state}; {hint}"),
    )
}

pub fn can_start(name: &str, state: VmState) -> Result<(), ApiError> {
    match state {
        VmState::Stopped | VmState::Error => Ok(()),
        VmState::Running => Err(refuse(name, state, "nothing to do")),
        _ => Err(refuse(name, state, "wait for it to settle and try again")),
    }
}

pub fn can_stop(name: &str, state: VmState) -> Result<(), ApiError> {
    match state {
        VmState::Running => Ok(()),
        VmState::Stopped => Err(refuse(name, state, "nothing to do")),
        _ => Err(refuse(name, state, "use `banger vm kill` to force it")),
    }
}

/// Kill works on anything that may have a VMM process.
pub fn can_kill(name: &str, state: VmState) -> Result<(), ApiError> {
    match state {
        VmState::Stopped => Err(refuse(name, state, "nothing to kill")),
        _ => Ok(()),
    }
}

pub fn can_restart(name: &str, state: VmState) -> Result<(), ApiError> {
    match state {
        VmState::Running => Ok(()),
        _ => Err(refuse(name, state, "use `banger vm start`")),
    }
}

/// Delete without `-f` refuses a VM that may be running.
pub fn can_delete(name: &str, state: VmState, force: bool) -> Result<(), ApiError> {
    match state {
        VmState::Stopped | VmState::Error => Ok(()),
        _ if force => Ok(()),
        _ => Err(refuse(
            name,
            state,
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
    use VmState::*;

    #[test]
    fn transitions() {
        assert!(can_start("a", Stopped).is_ok());
        assert!(can_start("a", Error).is_ok());
        assert_eq!(
            can_start("a", Running).unwrap_err().code,
            ErrorCode::InvalidState
        );
        assert!(can_stop("a", Running).is_ok());
        assert!(can_stop("a", Stopped).is_err());
        assert!(can_kill("a", Stopping).is_ok());
        assert!(can_kill("a", Stopped).is_err());
        assert!(can_restart("a", Stopped).is_err());
        assert!(can_delete("a", Running, false).is_err());
        assert!(can_delete("a", Running, true).is_ok());
        assert!(can_delete("a", Stopped, false).is_ok());
        assert!(!is_prunable(Running) && !is_prunable(Creating) && is_prunable(Stopped));
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = can_delete("dev", Running, false).unwrap_err();
        assert!(e.message.contains("-f"), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }
}
