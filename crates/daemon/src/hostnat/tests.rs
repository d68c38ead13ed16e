//! NAT logic against the fake iptables (`host::fake`), which keeps rules in
//! memory and answers `-C`, `-A`, `-I`, `-D` and `-S` like the real one.

use super::*;
use crate::host::fake::FakeIptables;

#[test]
fn install_is_idempotent_and_scoped_to_the_guest() {
    let ipt = FakeIptables::default();
    for _ in 0..3 {
        install(&ipt, "dev", "172.30.0.2", "banger0").unwrap();
    }
    assert_eq!(ipt.count("MASQUERADE"), 1);
    assert_eq!(ipt.count("\"banger:dev\""), 3);
    let nat = ipt
        .run(&["-t".into(), "nat".into(), "-S".into(), "POSTROUTING".into()])
        .unwrap();
    assert!(nat.contains("-s 172.30.0.2/32 ! -o banger0"), "{nat}");
    assert_eq!(list(&ipt).unwrap().into_iter().collect::<Vec<_>>(), ["dev"]);
    uninstall(&ipt, "dev", "172.30.0.2", "banger0").unwrap();
    uninstall(&ipt, "dev", "172.30.0.2", "banger0").unwrap();
    assert!(ipt.0.rules().is_empty());
}

#[test]
fn reconcile_adds_missing_removes_orphans_and_spares_others() {
    let ipt = FakeIptables::default();
    ipt.push_rule("nat", "-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE");
    install(&ipt, "gone", "172.30.0.9", "banger0").unwrap();
    ensure_isolation(&ipt, "banger0").unwrap();
    let removed = reconcile(&ipt, &[("dev".into(), "172.30.0.2".into())], "banger0").unwrap();
    assert_eq!(removed, ["gone"]);
    assert_eq!(ipt.count("banger:gone"), 0);
    assert_eq!(ipt.count("\"banger:dev\""), 3);
    assert_eq!(
        ipt.count("10.0.0.0/8"),
        1,
        "someone else's rule was touched"
    );
    assert_eq!(
        ipt.count("banger:isolate"),
        1,
        "the isolation rule is not an orphan"
    );
}

#[test]
fn guests_reach_only_dns_of_the_host_and_the_guard_is_idempotent() {
    let ipt = FakeIptables::default();
    ipt.push_rule("filter", "-A INPUT -j ACCEPT");
    for _ in 0..2 {
        guard_host(&ipt, "banger0", 53).unwrap();
    }
    let input = ipt
        .run(&["-t".into(), "filter".into(), "-S".into(), "INPUT".into()])
        .unwrap();
    let first = input.lines().next().unwrap();
    assert!(
        first.contains("-i banger0") && first.ends_with("-j BANGER-IN-banger0"),
        "the jump must come before the host's own rules: {input}"
    );
    assert_eq!(ipt.count("-j BANGER-IN-banger0"), 1, "jump duplicated");
    let chain = ipt
        .run(&[
            "-t".into(),
            "filter".into(),
            "-S".into(),
            "BANGER-IN-banger0".into(),
        ])
        .unwrap();
    let lines: Vec<&str> = chain.lines().collect();
    assert_eq!(lines.len(), 4, "{chain}");
    assert!(lines[0].contains("ESTABLISHED,RELATED -j ACCEPT"));
    assert!(lines[1].contains("-p udp --dport 53 -j ACCEPT"));
    assert!(lines[2].contains("-p tcp --dport 53 -j ACCEPT"));
    assert!(
        lines[3].ends_with("-j DROP"),
        "everything else is dropped: {chain}"
    );
    // A rule lost from the chain is put back, in order.
    ipt.run(&[
        "-t".into(),
        "filter".into(),
        "-D".into(),
        "BANGER-IN-banger0".into(),
        "-j".into(),
        "DROP".into(),
    ])
    .unwrap();
    guard_host(&ipt, "banger0", 53).unwrap();
    let chain = ipt
        .run(&[
            "-t".into(),
            "filter".into(),
            "-S".into(),
            "BANGER-IN-banger0".into(),
        ])
        .unwrap();
    assert!(
        chain.lines().last().unwrap().ends_with("-j DROP"),
        "{chain}"
    );
    assert!(
        list(&ipt).unwrap().is_empty(),
        "the guard is not a VM's rule"
    );
}

#[test]
fn rule_lines_parse_back_to_vm_names() {
    assert_eq!(
        rules::vm_of("-A POSTROUTING -s 1.2.3.4/32 ! -o b -m comment --comment \"banger:dev-1\" -j MASQUERADE"),
        Some("dev-1".into())
    );
    assert_eq!(
        rules::vm_of("-A FORWARD -m comment --comment banger:isolate -j DROP"),
        None
    );
    assert_eq!(
        rules::vm_of("-A FORWARD -m comment --comment \"docker: x\" -j DROP"),
        None
    );
    assert_eq!(rules::split_rule("a \"b c\" d"), ["a", "b c", "d"]);
}

/// Found by the `iptables_rules` fuzz target: `isolate` is a valid VM name,
/// and its rules carry the isolation rule's tag; they were taken for the
/// isolation rule, so reconcile never removed them once orphaned (and the
/// next VM given that address would have had NAT).
#[test]
fn a_vm_named_isolate_is_not_the_isolation_rule() {
    assert_eq!(
        rules::vm_of("-A POSTROUTING -s 172.30.0.2/32 ! -o banger0 -m comment --comment banger:isolate -j MASQUERADE"),
        Some("isolate".into())
    );
    for rule in rules::for_vm("isolate", "172.30.0.2", "banger0") {
        let line = format!("-A {} {}", rule.chain, rule.spec.join(" "));
        assert_eq!(rules::vm_of(&line), Some("isolate".into()), "{line}");
    }
    let ipt = FakeIptables::default();
    install(&ipt, "isolate", "172.30.0.2", "banger0").unwrap();
    ensure_isolation(&ipt, "banger0").unwrap();
    assert_eq!(
        list(&ipt).unwrap().into_iter().collect::<Vec<_>>(),
        ["isolate"]
    );
    assert_eq!(reconcile(&ipt, &[], "banger0").unwrap(), ["isolate"]);
    assert_eq!(ipt.count("172.30.0.2"), 0, "the orphan's rules stayed");
    assert_eq!(ipt.count("-j DROP"), 1, "the isolation rule was removed");
}
