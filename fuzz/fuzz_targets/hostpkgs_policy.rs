//! `banger_hostpkgs`: `policy::parse` on arbitrary `apt-cache policy`
//! text, `plan` and `fresh_plan` on what it parsed (checked against the
//! plan's promises), and `version::compare` as a total order (reflexive,
//! antisymmetric, transitive) on the versions found.
#![no_main]

use std::cmp::Ordering;
use std::collections::BTreeMap;

use banger_fuzz::text;
use banger_hostpkgs::version::{compare, source_of};
use banger_hostpkgs::{
    fresh_plan, plan, policy, Action, Plan, PlanError, Policy, BASE_PACKAGES, QEMU_PACKAGES,
};
use libfuzzer_sys::fuzz_target;

/// How many versions the pairwise check takes, and the triple check.
const MAX_VERSIONS: usize = 10;
const MAX_TRIPLES: usize = 6;

fn check_plan(policies: &BTreeMap<String, Policy>, plan: &Plan, fresh: bool) {
    let qemu: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| QEMU_PACKAGES.contains(&s.package.as_str()) || s.package.starts_with("qemu-"))
        .collect();
    for p in QEMU_PACKAGES.iter().chain(BASE_PACKAGES) {
        assert!(
            plan.steps.iter().any(|s| s.package == *p),
            "{p} missing from {plan:?}"
        );
    }
    // The QEMU set is pinned to one source version.
    let sources: Vec<&str> = qemu
        .iter()
        .map(|s| source_of(s.pin.as_deref().expect("QEMU packages are pinned")))
        .collect();
    assert!(sources.windows(2).all(|w| w[0] == w[1]), "{plan:?}");
    for s in &plan.steps {
        let pol = &policies[&s.package];
        if fresh {
            assert_eq!(s.installed, None, "{s:?}");
        } else {
            assert_eq!(s.installed, pol.installed, "{s:?}");
        }
        match s.action {
            Action::Keep => {
                assert!(!fresh, "a fresh machine keeps nothing: {s:?}");
                assert!(s.installed.is_some());
                if let Some(pin) = &s.pin {
                    assert_eq!(Some(pin), s.installed.as_ref());
                }
            }
            Action::Install => assert!(s.installed.is_none(), "{s:?}"),
            Action::Upgrade | Action::Downgrade => {
                let (from, to) = (s.installed.as_deref().unwrap(), s.pin.as_deref().unwrap());
                let want = if s.action == Action::Upgrade {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
                assert_ne!(compare(to, from), want.reverse(), "{s:?}");
                if s.action == Action::Downgrade {
                    assert_eq!(compare(to, from), Ordering::Less, "{s:?}");
                }
            }
        }
        // A pin that changes something is offered by an archive (apt lists
        // a version once; a table may list it twice here, so any row).
        if let (Some(pin), true) = (&s.pin, s.action != Action::Keep) {
            let offered = pol
                .versions
                .iter()
                .any(|e| e.version == *pin && e.downloadable());
            assert!(offered, "{s:?} pinned to a version no archive offers");
        }
    }
    let args = plan.install_args();
    let downgrades = plan.changes().any(|s| s.action == Action::Downgrade);
    assert_eq!(args.iter().any(|a| a == "--allow-downgrades"), downgrades);
    assert_eq!(
        args.len() - 4 - usize::from(downgrades),
        plan.changes().count()
    );
    assert_eq!(plan.is_satisfied(), plan.changes().next().is_none());
    let _ = (plan.fix_command(), plan.simulate_args());
    for s in &plan.steps {
        let _ = (s.describe(), s.request());
    }
}

fn check_result(policies: &BTreeMap<String, Policy>, r: Result<Plan, PlanError>, fresh: bool) {
    match r {
        Ok(p) => check_plan(policies, &p, fresh),
        Err(PlanError::Unknown(names)) => {
            assert!(!names.is_empty());
            assert!(names.iter().all(|n| !policies.contains_key(n)));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn check_order(versions: &[&str]) {
    for a in versions {
        assert_eq!(compare(a, a), Ordering::Equal, "{a:?}");
        assert_ne!(compare(source_of(a), a), Ordering::Greater, "{a:?}");
        for b in versions {
            let ab = compare(a, b);
            assert_eq!(ab, compare(b, a).reverse(), "{a:?} vs {b:?}");
            for c in versions.iter().take(MAX_TRIPLES) {
                if ab != Ordering::Greater && compare(b, c) != Ordering::Greater {
                    assert_ne!(compare(a, c), Ordering::Greater, "{a:?} <= {b:?} <= {c:?}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = text(data);
    let policies = policy::parse(input);
    for (name, p) in &policies {
        assert!(!name.starts_with(' '));
        for e in &p.versions {
            assert!(!e.version.is_empty() && !e.version.contains(char::is_whitespace));
        }
    }
    check_result(&policies, plan(&policies), false);
    check_result(&policies, fresh_plan(&policies), true);

    // Versions: the first lines of the input as they are, then what the
    // parser found.
    let mut versions: Vec<&str> = input.lines().take(4).collect();
    for p in policies.values() {
        versions.extend(p.installed.as_deref());
        versions.extend(p.candidate.as_deref());
        versions.extend(p.versions.iter().map(|e| e.version.as_str()));
    }
    versions.truncate(MAX_VERSIONS);
    check_order(&versions);
});
