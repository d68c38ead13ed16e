//! The leak check: what exists on the host (VMM processes, taps, NAT rules,
//! loop devices, VM directories, known_hosts lines) against what the
//! daemon's store says. After every scenario, nothing may belong to a VM
//! the store does not have (scenarios run side by side, so a VM may be
//! half way through an operation then); at the end, with nothing running,
//! each VM must also have exactly what its state allows.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

use super::Env;

/// A VM as the store has it.
struct Stored {
    state: String,
    tap: String,
}

fn stored(env: &Env) -> anyhow::Result<BTreeMap<String, Stored>> {
    let list: Value = serde_json::from_str(&env.ok(&["vm", "list", "--json"])?)?;
    Ok(list
        .as_array()
        .map(|vms| {
            vms.iter()
                .filter_map(|v| {
                    Some((
                        v["name"].as_str()?.to_string(),
                        Stored {
                            state: v["state"].as_str().unwrap_or_default().to_string(),
                            tap: v["tap"].as_str().unwrap_or_default().to_string(),
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Runs `argv` inside the smoke namespace; its stdout.
fn in_ns(env: &Env, argv: &[&str]) -> String {
    Command::new("ip")
        .args(["netns", "exec", &env.ns.name])
        .args(argv)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// VM names whose VMM runs from this suite's directories.
fn vmm_processes(env: &Env) -> BTreeSet<String> {
    let dir = env.dir.display().to_string();
    let mut names = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return names;
    };
    for p in procs.flatten() {
        let Ok(raw) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a.contains(&dir)) {
            continue;
        }
        for a in &args {
            for token in a.split(|c: char| c.is_whitespace() || c == ',') {
                if let Some(name) = token.strip_prefix("banger-vm=") {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

fn taps(env: &Env) -> BTreeSet<String> {
    in_ns(env, &["ip", "-o", "link", "show", "type", "tun"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("banger-tap"))
        .collect()
}

/// VM names that have NAT rules.
fn rule_owners(env: &Env) -> BTreeSet<String> {
    let mut text = in_ns(env, &["iptables", "-w", "-S"]);
    text.push_str(&in_ns(env, &["iptables", "-w", "-t", "nat", "-S"]));
    text.lines()
        .filter_map(|l| l.split("banger:").nth(1))
        .map(|rest| {
            rest.trim_matches('"')
                .split(['"', ' '])
                .next()
                .unwrap_or("")
        })
        .filter(|n| !n.is_empty() && !n.starts_with('-') && *n != "isolate")
        .map(str::to_string)
        .collect()
}

fn dir_names(path: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn known_hosts_owners(env: &Env) -> BTreeSet<String> {
    std::fs::read_to_string(env.state_dir.join("ssh/known_hosts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.strip_prefix("banger-vm:"))
        .map(str::to_string)
        .collect()
}

fn loop_devices(env: &Env) -> Vec<String> {
    let dir = env.dir.display().to_string();
    Command::new("losetup")
        .arg("-a")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(&dir))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// What belongs to no VM the store has. `strict` (nothing running) also
/// holds each VM to its state: a stopped VM has no VMM, tap or run
/// directory; a running one has its VMM.
pub fn check(env: &Env, strict: bool) -> anyhow::Result<Vec<String>> {
    let vms = stored(env)?;
    let known = |n: &String| vms.contains_key(n);
    let mut leaks = Vec::new();
    let procs = vmm_processes(env);
    // A template build's VMM (`.tpl-ID`) runs beside the VMs; at the end
    // none may still run, nor leave a half-built template.
    for n in procs.iter().filter(|n| !known(n)) {
        match n.starts_with(".tpl-") {
            false => leaks.push(format!("VMM process of {n}")),
            true if strict => leaks.push(format!("template build {n} still running")),
            true => {}
        }
    }
    if strict {
        for d in dir_names(&env.state_dir.join("templates")) {
            if d.starts_with('.') {
                leaks.push(format!("half-built template {d}"));
            }
        }
    }
    let stored_taps: BTreeMap<&str, &Stored> = vms.values().map(|v| (v.tap.as_str(), v)).collect();
    for t in taps(env) {
        match stored_taps.get(t.as_str()) {
            None => leaks.push(format!("tap {t}")),
            Some(v) if strict && v.state == "stopped" => {
                leaks.push(format!("tap {t} of a stopped VM"))
            }
            Some(_) => {}
        }
    }
    for n in rule_owners(env).iter().filter(|n| !known(n)) {
        leaks.push(format!("NAT rules of {n}"));
    }
    for n in dir_names(&env.state_dir.join("vms"))
        .iter()
        .filter(|n| !known(n))
    {
        leaks.push(format!("state directory of {n}"));
    }
    let run_dirs = dir_names(&env.run_dir.join("vms"));
    for n in &run_dirs {
        match vms.get(n) {
            None => leaks.push(format!("run directory of {n}")),
            Some(v) if strict && v.state == "stopped" => {
                leaks.push(format!("run directory of stopped {n}"))
            }
            Some(_) => {}
        }
    }
    for n in known_hosts_owners(env).iter().filter(|n| !known(n)) {
        leaks.push(format!("known_hosts line of {n}"));
    }
    leaks.extend(
        loop_devices(env)
            .into_iter()
            .map(|l| format!("loop device {l}")),
    );
    if strict {
        for (n, v) in &vms {
            match v.state.as_str() {
                "running" if !procs.contains(n) => {
                    leaks.push(format!("{n} is running without a VMM"))
                }
                "stopped" if procs.contains(n) => leaks.push(format!("stopped {n} has a VMM")),
                "creating" | "stopping" => leaks.push(format!("{n} was left {}", v.state)),
                _ => {}
            }
        }
    }
    Ok(leaks)
}
