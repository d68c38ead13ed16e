//! `cargo xtask setup`: installs the Debian packages banger and its tests
//! need, following the plan `banger-hostpkgs` makes from apt's report, and
//! proves on every run (with `apt-get install --simulate`) that a fresh
//! machine could install the same pins.

use anyhow::{bail, Context};
use banger_hostpkgs::{apt, Plan};

pub fn run() -> anyhow::Result<()> {
    let mut policies = apt::policies()?;
    let mut planned = banger_hostpkgs::plan(&policies);
    if !planned.as_ref().is_ok_and(Plan::is_satisfied) {
        // Something to install, or a package apt does not know: the lists
        // may be stale or absent (a new machine), so refresh them first.
        if !is_root() {
            match &planned {
                Ok(plan) => bail!(
                    "packages to install: {}; run as root, or: {}",
                    changed_names(plan),
                    plan.fix_command()
                ),
                Err(e) => bail!("{e}"),
            }
        }
        eprintln!("==> setup: apt-get update");
        apt::run_quiet(&["update".to_string(), "-q".to_string()])?;
        policies = apt::policies()?;
        planned = banger_hostpkgs::plan(&policies);
    }
    let plan = planned?;
    check_fresh_machine_plan(&policies)?;
    if plan.is_satisfied() {
        eprintln!("==> setup: every package is installed; nothing to do");
        return Ok(());
    }
    eprintln!("==> setup: installing {}", changed_names(&plan));
    for step in plan.changes() {
        eprintln!("    {}", step.describe());
    }
    apt::run_visible(&plan.install_args())?;
    let after = banger_hostpkgs::plan(&apt::policies()?)?;
    if !after.is_satisfied() {
        let left: Vec<String> = after.changes().map(|s| s.describe()).collect();
        bail!("apt-get install finished but {}", left.join("; "));
    }
    eprintln!("==> setup: done");
    Ok(())
}

/// Simulates installing what a machine with none of the packages would,
/// pins included: a pin apt cannot satisfy fails here, on any machine.
fn check_fresh_machine_plan(
    policies: &std::collections::BTreeMap<String, banger_hostpkgs::Policy>,
) -> anyhow::Result<()> {
    let fresh = banger_hostpkgs::fresh_plan(policies)?;
    apt::run_quiet(&fresh.simulate_args())
        .context("the install plan for a fresh machine does not simulate")?;
    let pins: Vec<String> = fresh
        .steps
        .iter()
        .filter_map(|s| s.pin.as_ref().map(|_| s.request()))
        .collect();
    eprintln!(
        "==> setup: a fresh machine's install plan simulates cleanly ({})",
        pins.join(" ")
    );
    Ok(())
}

fn changed_names(plan: &Plan) -> String {
    plan.changes()
        .map(|s| s.package.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
