//! `bangerd::hostnat::rules::{split_rule, vm_of}`: `iptables -S` lines as
//! reconciliation reads them (which VM a rule belongs to, and the exact
//! arguments to delete it with).
#![no_main]

use banger_fuzz::{name_from, text};
use bangerd::hostnat::rules::{for_vm, guard_jump, isolation, split_rule, vm_of};
use libfuzzer_sys::fuzz_target;

/// A rule as `iptables -S CHAIN` prints it (no argument of ours needs quotes).
fn printed(chain: &str, spec: &[String]) -> String {
    format!("-A {chain} {}", spec.join(" "))
}

fuzz_target!(|data: &[u8]| {
    let line = text(data);

    // Any line: arguments never keep quotes; a VM found is a valid name
    // that the line carries as `banger:NAME`, never the isolation rule.
    let args = split_rule(line);
    assert!(args.iter().all(|a| !a.contains('"')), "{args:?}");
    if let Some(vm) = vm_of(line) {
        assert!(banger_api::validate_vm_name(&vm).is_ok(), "{vm:?}");
        if vm == "isolate" {
            let drops = args.windows(2).any(|w| w[0] == "-j" && w[1] == "DROP");
            assert!(!drops, "the isolation rule taken for a VM's: {line:?}");
        }
        let unquoted = line.replace('"', "");
        assert!(
            unquoted.contains(&format!("banger:{vm}")),
            "{line:?} -> {vm:?}"
        );
    }

    // Arguments split on NUL, each quoted: split_rule gives them back.
    let parts: Vec<String> = line.split('\0').map(|p| p.replace('"', "")).collect();
    let quoted: Vec<String> = parts.iter().map(|p| format!("\"{p}\"")).collect();
    assert_eq!(split_rule(&quoted.join(" ")), parts);
    // Unquoted, when no argument is empty or holds whitespace.
    if parts
        .iter()
        .all(|p| !p.is_empty() && !p.contains(char::is_whitespace))
    {
        assert_eq!(split_rule(&parts.join(" ")), parts);
    }

    // The rules banger writes for a VM are found again, and deleted with
    // exactly the arguments they were added with.
    if let Some(vm) = name_from(line) {
        for rule in for_vm(&vm, "172.30.0.2", "banger0") {
            let l = printed(rule.chain, &rule.spec);
            assert_eq!(vm_of(&l).as_deref(), Some(vm.as_str()), "{l}");
            let mut want = vec![rule.chain.to_string()];
            want.extend(rule.spec.iter().cloned());
            assert_eq!(split_rule(&l).into_iter().skip(1).collect::<Vec<_>>(), want);
        }
    }
    // banger's bridge-wide rules belong to no VM.
    for rule in [isolation("banger0"), guard_jump("banger0")] {
        assert_eq!(vm_of(&printed(rule.chain, &rule.spec)), None);
    }
});
