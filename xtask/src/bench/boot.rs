//! The start rows: create-to-SSH restored from a template, cold, and a
//! hand-started QEMU of the same files; four restored creates at once;
//! memory of the daemon and of each VM's QEMU, cold and restored.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use super::report::{median, Row};
use super::{handboot, memory};
use crate::smoke::Env;

/// The shape every bench VM has (`Env::create`).
const SHAPE: &str = "1c-768m-4g";
const MEMORY_MIB: u64 = 768;

fn template_ready(env: &Env) -> anyhow::Result<bool> {
    let list: Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
    Ok(list.as_array().is_some_and(|a| {
        a.iter().any(|i| {
            i["current"] == true
                && i["templates"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|s| s == SHAPE))
        })
    }))
}

/// The current default image's directory, if there is one.
fn current_default(env: &Env) -> anyhow::Result<Option<std::path::PathBuf>> {
    let list: Value = serde_json::from_str(&env.ok(&["image", "list", "--json"])?)?;
    Ok(list
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i["name"] == "default" && i["current"] == true)
        })
        .and_then(|i| i["path"].as_str())
        .map(Into::into))
}

/// The current default image's directory, built first (untimed) when the
/// image directory has none, so that no create-to-SSH sample includes it.
pub fn image_dir(env: &Env) -> anyhow::Result<std::path::PathBuf> {
    if let Some(dir) = current_default(env)? {
        return Ok(dir);
    }
    eprintln!("==> building the default image (not timed)");
    env.ok(&["image", "build"])?;
    current_default(env)?.context("no current default image after `image build`")
}

fn delete(env: &Env, vm: &str) -> anyhow::Result<()> {
    env.ok(&["vm", "delete", "-f", vm]).map(drop)
}

pub fn run(env: &Env, runs: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let daemon = env.daemon_pid().context("the daemon is not running")?;
    let idle_rss = memory::rss_mib(daemon)?;

    // The first create of the shape boots cold, waits for the daemon's
    // one-time accelerator probe and starts the template's build, which is
    // left to finish alone: a row of its own. Then cold creates (`--cold`)
    // and hand-started boots take turns, so that a spell of load on a
    // shared machine weighs on both sides of their ratio alike.
    let image = image_dir(env)?;
    eprintln!("==> the first create of the shape");
    let first = env.create_timed("bench-first", &[])?.as_secs_f64();
    ensure!(
        env.vm_json("bench-first")?["template"].is_null(),
        "the first create was restored"
    );
    eprintln!("    first create: {first:.1}s");
    let cold_mem = memory::qemu_of(env, "bench-first", MEMORY_MIB)?;
    delete(env, "bench-first")?;
    wait_for_template(env)?;
    eprintln!("==> cold creates and hand-started QEMU of the same files, in turn");
    let hand_boots = handboot::HandBoots::new(env, &image)?;
    let mut cold = Vec::new();
    let mut hand = Vec::new();
    // Each pair in the other order than the last (cold, hand; hand, cold;
    // ...), so that a machine growing faster or slower over the run does
    // not favour the side that always comes second.
    for i in 0..runs {
        for hand_first in [i % 2 == 1, i % 2 == 0] {
            if hand_first {
                let took = hand_boots.once(env)?;
                eprintln!("    hand-started QEMU {}: {took:.1}s", i + 1);
                hand.push(took);
                continue;
            }
            let vm = format!("bench-cold{i}");
            let took = env.create_timed(&vm, &["--cold"])?.as_secs_f64();
            ensure!(env.vm_json(&vm)?["template"].is_null(), "{vm} was restored");
            eprintln!("    cold create {}: {took:.1}s", i + 1);
            cold.push(took);
            delete(env, &vm)?;
        }
    }
    drop(hand_boots);

    eprintln!("==> creates restored from the template");
    let mut restored = Vec::new();
    for i in 0..runs {
        let vm = format!("bench-tpl{i}");
        let took = env.create_timed(&vm, &[])?.as_secs_f64();
        let v = env.vm_json(&vm)?;
        ensure!(v["template"].is_string(), "{vm} was not restored: {v}");
        eprintln!("    restored create {}: {took:.1}s", i + 1);
        restored.push(took);
        delete(env, &vm)?;
    }

    eprintln!("==> four restored creates at once");
    let four: Vec<String> = (0..4).map(|i| format!("bench-four{i}")).collect();
    let names: Vec<&str> = four.iter().map(String::as_str).collect();
    let t = Instant::now();
    env.create_parallel(&names)?;
    let wall = t.elapsed().as_secs_f64();
    let busy_rss = memory::rss_mib(daemon)?;
    let mut per_vm = Vec::new();
    for vm in &names {
        per_vm.push(memory::qemu_of(env, vm, MEMORY_MIB)?);
    }
    for vm in &names {
        delete(env, vm)?;
    }

    let (c, h, r) = (median(&cold), median(&hand), median(&restored));
    rows.push(
        Row::new(
            "start",
            "create-to-SSH, restored from a template",
            "s",
            restored.clone(),
        )
        .with_ratio("faster than cold", c / r),
    );
    rows.push(Row::new("start", "create-to-SSH, cold boot", "s", cold));
    rows.push(Row::new(
        "start",
        "first create of a shape (KVM probe, starts its template)",
        "s",
        vec![first],
    ));
    rows.push(
        Row::new(
            "start",
            "hand-started qemu-system-x86_64 to SSH (same files)",
            "s",
            hand,
        )
        .with_ratio("banger cold / hand-started", c / h),
    );
    rows.push(
        Row::new(
            "start",
            "4 restored creates at once (wall, 0 failures)",
            "s",
            vec![wall],
        )
        .with_ratio("of one restored create", wall / r),
    );
    rows.push(Row::new("memory", "daemon RSS, idle", "Mi", vec![idle_rss]));
    rows.push(Row::new(
        "memory",
        "daemon RSS, 4 VMs running",
        "Mi",
        vec![busy_rss],
    ));
    rows.push(Row::new(
        "memory",
        "QEMU beyond guest RAM, cold VM (RSS - RAM block RSS)",
        "Mi",
        vec![cold_mem.beyond_ram],
    ));
    rows.push(Row::new(
        "memory",
        "QEMU beyond guest RAM, restored VMs",
        "Mi",
        per_vm.iter().map(|m| m.beyond_ram).collect(),
    ));
    rows.push(Row::new(
        "memory",
        "guest RAM resident, cold VM just booted",
        "Mi",
        vec![cold_mem.ram],
    ));
    rows.push(Row::new(
        "memory",
        "guest RAM resident, restored VMs (private; PSS = RSS)",
        "Mi",
        per_vm.iter().map(|m| m.ram).collect(),
    ));
    Ok(rows)
}

/// Waits (up to 15 minutes) for the smoke shape's template.
fn wait_for_template(env: &Env) -> anyhow::Result<()> {
    let start = Instant::now();
    while !template_ready(env)? {
        ensure!(
            start.elapsed() < Duration::from_secs(900),
            "no template of {SHAPE} after 15 minutes"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}
