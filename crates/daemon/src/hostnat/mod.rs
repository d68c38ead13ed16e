//! Per-VM NAT with iptables: a POSTROUTING MASQUERADE rule scoped to the
//! guest's /32 and out of any interface but the bridge, plus the FORWARD
//! accepts it needs; every rule tagged with a comment naming the VM, so
//! install is idempotent, removal exact, and reconciliation can find orphans
//! without touching anyone else's rules. Guests without NAT are kept on the
//! bridge by one bridge-wide FORWARD drop rule.

pub mod rules;

use std::collections::BTreeSet;

use crate::cmd::{self, CmdError};
pub use rules::Rule;

/// The comment that tags a VM's rules.
pub fn tag(vm: &str) -> String {
    format!("banger:{vm}")
}

/// Tag of the bridge-wide isolation rule.
pub const ISOLATE_TAG: &str = "banger:isolate";

/// Tag of the jump into the host guard chain (not a valid VM name, so
/// never taken for a VM's rule).
pub const GUARD_TAG: &str = "banger:-guard";

/// Anything that runs iptables (a fake in unit tests).
pub trait Iptables {
    /// `iptables ARGS`; Ok(stdout) on exit 0.
    fn run(&self, args: &[String]) -> Result<String, CmdError>;
    /// Turns on IPv4 forwarding, which NAT needs.
    fn enable_forwarding(&self);
}

/// The real iptables binary.
pub struct SystemIptables;

impl Iptables for SystemIptables {
    fn run(&self, args: &[String]) -> Result<String, CmdError> {
        // -w: wait for the xtables lock other programs may hold.
        let mut full = vec!["-w".to_string()];
        full.extend_from_slice(args);
        cmd::run("iptables", &full)
    }

    fn enable_forwarding(&self) {
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n") {
            tracing::warn!("enabling IPv4 forwarding: {e}");
        }
    }
}

/// Check-then-add is not atomic: rule changes from concurrent operations
/// in this daemon go one at a time.
static RULES_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    RULES_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds `rule` unless an identical one exists (`-C` first).
fn ensure(ipt: &dyn Iptables, rule: &Rule) -> Result<(), CmdError> {
    if ipt.run(&rule.args("-C")).is_err() {
        ipt.run(&rule.args(rule.add_verb()))?;
    }
    Ok(())
}

/// Deletes every copy of `rule`; none is success.
fn remove(ipt: &dyn Iptables, rule: &Rule) -> Result<(), CmdError> {
    while ipt.run(&rule.args("-C")).is_ok() {
        ipt.run(&rule.args("-D"))?;
    }
    Ok(())
}

/// Installs NAT for `vm` at `ip`: idempotent, never duplicates.
pub fn install(ipt: &dyn Iptables, vm: &str, ip: &str, bridge: &str) -> Result<(), CmdError> {
    let _guard = lock();
    ipt.enable_forwarding();
    for rule in rules::for_vm(vm, ip, bridge) {
        ensure(ipt, &rule)?;
    }
    Ok(())
}

/// Removes `vm`'s NAT rules; already gone is success.
pub fn uninstall(ipt: &dyn Iptables, vm: &str, ip: &str, bridge: &str) -> Result<(), CmdError> {
    let _guard = lock();
    for rule in rules::for_vm(vm, ip, bridge) {
        remove(ipt, &rule)?;
    }
    Ok(())
}

/// Keeps guests without NAT from reaching beyond the bridge.
pub fn ensure_isolation(ipt: &dyn Iptables, bridge: &str) -> Result<(), CmdError> {
    let _guard = lock();
    ensure(ipt, &rules::isolation(bridge))
}

/// Keeps guests from reaching the host's own services: packets from the
/// bridge to the host go through a chain of banger's that accepts replies
/// and DNS (`dns_port`, 0 for none) and drops the rest. Idempotent: the
/// chain is rebuilt whenever it is not exactly as it should be.
pub fn guard_host(ipt: &dyn Iptables, bridge: &str, dns_port: u16) -> Result<(), CmdError> {
    let _guard = lock();
    let chain = rules::guard_chain(bridge);
    let filter = |verb: &str, rest: &[String]| -> Vec<String> {
        let mut a = vec!["-t".into(), "filter".into(), verb.into(), chain.clone()];
        a.extend_from_slice(rest);
        a
    };
    let want = rules::guard_rules(dns_port);
    let present = match ipt.run(&["-t".into(), "filter".into(), "-S".into(), chain.clone()]) {
        Ok(out) => out.lines().filter(|l| l.starts_with("-A ")).count(),
        Err(_) => {
            ipt.run(&filter("-N", &[]))?;
            0
        }
    };
    // Only banger writes this chain, always whole and in order: the right
    // number of rules, each present, is the chain as it should be.
    let intact = present == want.len() && want.iter().all(|r| ipt.run(&filter("-C", r)).is_ok());
    if !intact {
        ipt.run(&filter("-F", &[]))?;
        for r in &want {
            ipt.run(&filter("-A", r))?;
        }
    }
    ensure(ipt, &rules::guard_jump(bridge))
}

/// VM names that have banger NAT rules installed.
pub fn list(ipt: &dyn Iptables) -> Result<BTreeSet<String>, CmdError> {
    let mut names = BTreeSet::new();
    for (table, chain) in [("nat", "POSTROUTING"), ("filter", "FORWARD")] {
        let out = ipt.run(&["-t".into(), table.into(), "-S".into(), chain.into()])?;
        for line in out.lines() {
            if let Some(name) = rules::vm_of(line) {
                names.insert(name);
            }
        }
    }
    Ok(names)
}

/// Makes the rules match `want` (VM name -> IP): adds missing ones, removes
/// banger rules of VMs not in `want`. Returns the orphans removed.
pub fn reconcile(
    ipt: &dyn Iptables,
    want: &[(String, String)],
    bridge: &str,
) -> Result<Vec<String>, CmdError> {
    for (vm, ip) in want {
        install(ipt, vm, ip, bridge)?;
    }
    let _guard = lock();
    let mut removed = Vec::new();
    for (table, chain) in [("nat", "POSTROUTING"), ("filter", "FORWARD")] {
        let out = ipt.run(&["-t".into(), table.into(), "-S".into(), chain.into()])?;
        for line in out.lines() {
            let Some(vm) = rules::vm_of(line) else {
                continue;
            };
            if want.iter().any(|(w, _)| *w == vm) {
                continue;
            }
            // Delete exactly this rule, as iptables printed it.
            let mut args: Vec<String> = vec!["-t".into(), table.into(), "-D".into()];
            args.extend(rules::split_rule(line).into_iter().skip(1));
            ipt.run(&args)?;
            removed.push(vm);
        }
    }
    removed.dedup();
    Ok(removed)
}

#[cfg(test)]
mod tests;
