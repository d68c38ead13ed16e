//! The install plan on `apt-cache policy` reports recorded on Debian 12
//! machines of the kind banger's CI runs on (see fixtures/README.md).

use std::collections::BTreeMap;

use banger_hostpkgs::{fresh_plan, plan, policy, Action, Plan, PlanError, Policy};

fn fixture(name: &str) -> BTreeMap<String, Policy> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    policy::parse(&text)
}

fn step<'a>(plan: &'a Plan, package: &str) -> &'a banger_hostpkgs::Step {
    plan.steps
        .iter()
        .find(|s| s.package == package)
        .unwrap_or_else(|| panic!("{package} not in the plan"))
}

fn changed(plan: &Plan) -> Vec<String> {
    plan.changes().map(|s| s.request()).collect()
}

const B3: &str = "1:7.2+dfsg-7+deb12u18+b3";
const DATA: &str = "1:7.2+dfsg-7+deb12u18";

#[test]
fn backport_preinstalled_is_downgraded_and_data_gets_its_own_version() {
    let plan = plan(&fixture("fresh-backport.policy")).expect("plan");
    assert_eq!(
        changed(&plan),
        [
            format!("qemu-system-x86={B3}"),
            format!("qemu-system-common={B3}"),
            format!("qemu-system-data={DATA}"),
            format!("qemu-utils={B3}"),
            "mmdebstrap".to_string(),
            "iptables".to_string(),
            "cpio".to_string(),
            "dnsutils".to_string(),
            "xfsprogs".to_string(),
        ]
    );
    assert_eq!(step(&plan, "qemu-utils").action, Action::Downgrade);
    assert_eq!(step(&plan, "git").action, Action::Keep);
    let args = plan.install_args();
    assert!(args.contains(&"--allow-downgrades".to_string()));
    assert!(
        !args.iter().any(|a| a.starts_with("git")),
        "installed packages are left alone"
    );
    assert!(step(&plan, "qemu-utils")
        .describe()
        .contains("downgrade to 1:7.2+dfsg-7+deb12u18+b3"));
}

#[test]
fn without_the_backport_nothing_is_downgraded() {
    let plan = plan(&fixture("fresh-no-backport.policy")).expect("plan");
    assert_eq!(step(&plan, "qemu-utils").action, Action::Install);
    assert_eq!(step(&plan, "qemu-utils").pin.as_deref(), Some(B3));
    assert_eq!(step(&plan, "qemu-system-data").pin.as_deref(), Some(DATA));
    assert!(!plan
        .install_args()
        .contains(&"--allow-downgrades".to_string()));
}

#[test]
fn stale_lists_pin_the_binnmu_they_offer() {
    let plan = plan(&fixture("fresh-backport-stale-lists.policy")).expect("plan");
    let b2 = "1:7.2+dfsg-7+deb12u18+b2";
    assert_eq!(step(&plan, "qemu-system-x86").pin.as_deref(), Some(b2));
    assert_eq!(step(&plan, "qemu-utils").pin.as_deref(), Some(b2));
    assert_eq!(step(&plan, "qemu-system-data").pin.as_deref(), Some(DATA));
}

#[test]
fn a_newer_security_build_moves_the_whole_set() {
    // fresh-backport.policy with a deb12u19 security build of each QEMU
    // package added (qemu-block-extra left without one).
    let plan = plan(&fixture("security-newer.policy")).expect("plan");
    let u19 = "1:7.2+dfsg-7+deb12u19";
    for p in banger_hostpkgs::QEMU_PACKAGES {
        assert_eq!(step(&plan, p).pin.as_deref(), Some(u19), "{p}");
    }
    assert_eq!(step(&plan, "qemu-utils").action, Action::Downgrade);
}

#[test]
fn a_complete_machine_has_nothing_to_do() {
    let policies = fixture("complete.policy");
    let plan = plan(&policies).expect("plan");
    assert!(plan.is_satisfied(), "{:?}", changed(&plan));
    // The simulated plan of a fresh machine pins what the lists offer.
    let fresh = fresh_plan(&policies).expect("fresh plan");
    assert_eq!(step(&fresh, "qemu-system-data").pin.as_deref(), Some(DATA));
    assert_eq!(step(&fresh, "qemu-system-x86").pin.as_deref(), Some(B3));
    assert!(fresh
        .simulate_args()
        .contains(&format!("qemu-system-data={DATA}")));
}

#[test]
fn a_fresh_machine_plan_ignores_an_installed_backport() {
    let fresh = fresh_plan(&fixture("fresh-backport.policy")).expect("fresh plan");
    assert_eq!(step(&fresh, "qemu-utils").action, Action::Install);
    assert_eq!(step(&fresh, "qemu-utils").pin.as_deref(), Some(B3));
    assert!(fresh.steps.iter().all(|s| s.action == Action::Install));
}

#[test]
fn an_unknown_package_is_named_in_one_line() {
    let mut policies = fixture("fresh-backport.policy");
    policies.remove("mmdebstrap");
    let err = plan(&policies).expect_err("must fail");
    assert_eq!(err, PlanError::Unknown(vec!["mmdebstrap".to_string()]));
    let msg = err.to_string();
    assert!(
        msg.contains("mmdebstrap") && msg.contains("apt-get update"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn empty_lists_name_every_package() {
    let err = plan(&BTreeMap::new()).expect_err("must fail");
    let PlanError::Unknown(names) = err else {
        panic!("wrong error: {err}")
    };
    assert!(names.contains(&"qemu-system-x86".to_string()));
    assert!(names.contains(&"mmdebstrap".to_string()));
}

#[test]
fn a_known_package_without_candidate_is_refused() {
    let mut policies = fixture("fresh-backport.policy");
    if let Some(p) = policies.get_mut("iptables") {
        p.candidate = None;
    }
    let err = plan(&policies).expect_err("must fail");
    assert_eq!(err, PlanError::NoCandidate("iptables".to_string()));
}

#[test]
fn a_qemu_package_missing_the_version_is_refused() {
    let mut policies = fixture("fresh-backport.policy");
    if let Some(p) = policies.get_mut("qemu-system-data") {
        p.versions.retain(|e| e.version != DATA);
    }
    let err = plan(&policies).expect_err("must fail");
    assert!(
        matches!(&err, PlanError::QemuMismatch { package, .. } if package == "qemu-system-data"),
        "{err}"
    );
}

#[test]
fn an_installed_follower_follows_the_set() {
    let mut policies = fixture("fresh-backport.policy");
    let backport = "1:10.0.2+ds-2+deb13u1~bpo12+1";
    if let Some(p) = policies.get_mut("qemu-block-extra") {
        p.installed = Some(backport.to_string());
    }
    let plan = plan(&policies).expect("plan");
    let extra = step(&plan, "qemu-block-extra");
    assert_eq!(extra.action, Action::Downgrade);
    assert_eq!(extra.pin.as_deref(), Some(B3));
}

#[test]
fn the_fix_command_is_one_line_with_every_change() {
    let plan = plan(&fixture("fresh-backport.policy")).expect("plan");
    let fix = plan.fix_command();
    assert!(fix.starts_with("apt-get update && "), "{fix}");
    assert!(fix.contains(&format!("qemu-utils={B3}")), "{fix}");
    assert!(!fix.contains('\n'));
}
