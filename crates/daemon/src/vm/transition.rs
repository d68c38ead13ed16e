//! The one table of valid state changes. Every change is checked against
//! it and written as a compare-and-set (`Store::transition`), so two
//! writers can never both move a VM out of the same state.

use banger_api::VmState::{self, *};

/// Every `(from, to)` a VM may take.
const VALID: &[(VmState, VmState)] = &[
    // A first boot; or a create that failed or was killed.
    (Creating, Running),
    (Creating, Error),
    (Creating, Stopped),
    // start
    (Stopped, Running),
    (Error, Running),
    // Re-adopted by a restarted daemon whose VMM still runs (also in the
    // middle of a stop the daemon did not live to finish).
    (Running, Running),
    (Stopping, Running),
    // stop, and a VMM that exited or was killed.
    (Running, Stopping),
    (Running, Stopped),
    (Stopping, Stopped),
    // A boot or a stop that failed.
    (Running, Error),
    (Stopping, Error),
    (Stopped, Error),
    (Error, Error),
    // kill of a VM that failed.
    (Error, Stopped),
];

/// True when a VM in `from` may move to `to`.
pub fn allowed(from: VmState, to: VmState) -> bool {
    VALID.contains(&(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [VmState; 5] = [Creating, Running, Stopping, Stopped, Error];

    #[test]
    fn nothing_returns_to_creating_and_stopping_only_comes_from_running() {
        for from in ALL {
            assert!(!allowed(from, Creating), "{from} -> creating");
            assert_eq!(
                allowed(from, Stopping),
                from == Running,
                "{from} -> stopping"
            );
        }
    }

    #[test]
    fn every_state_can_reach_stopped_or_error_so_nothing_is_stuck() {
        for from in ALL {
            assert!(
                allowed(from, Stopped) || allowed(from, Error),
                "{from} has no way out"
            );
        }
        assert!(
            !allowed(Stopped, Stopped),
            "a stop of a stopped VM is refused earlier"
        );
    }
}
