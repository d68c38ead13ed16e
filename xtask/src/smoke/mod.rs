//! The smoke suite: real CLI, real daemon, real VMs, all inside a network
//! namespace the suite creates and removes. Each scenario prints its name,
//! result and time; the run ends with `N passed, M failed, K skipped`.
//!
//! Every scenario stands alone: it declares the VMs it needs
//! ([`env::VmSpec`]: name, create flags, workspace, running or stopped) and
//! the runner obtains them from the fixture ([`Env::vm`]), which makes
//! whatever is missing, before the scenario starts; so `--filter NAME`
//! runs any one of them by itself. A run goes in three phases:
//!
//! 1. [`When::First`] scenarios, one at a time, before any VM exists (a
//!    fresh daemon, the image build, bad input that must leave no VM).
//! 2. [`When::Together`] scenarios, [`WORKERS`] at a time, while the VMs
//!    they declare are made ahead in the order they will be wanted
//!    ([`env::boot_slots`] boots at a time). A scenario has its VMs to
//!    itself while it runs, except the shared one, which its users (who
//!    only look at it) use at once. When a run has several scenarios for
//!    one VM, they take it in the table's order where it matters: the
//!    scenario that makes a VM before those that use it, and the users of
//!    one spec of a VM before those of the next (e.g. `workspace prepare`
//!    leaves its VM as the export scenarios start from it).
//! 3. [`When::Last`] scenarios, one at a time, with the daemon to
//!    themselves (a daemon restart; `vm prune`, which deletes whatever is
//!    stopped; `vm delete`, whose VM's tap must be gone while no other VM
//!    could take its slot). They may take over VMs the middle phase is done
//!    with.
//!
//! Each scenario's report (result, time, when it started, how its VMs were
//! had, notes, and on failure the VMs' consoles and the daemon log) is
//! printed in one piece when it ends.

mod disks;
mod env;
mod everyday;
mod files;
mod leakcheck;
mod mcp;
mod scenarios;
mod stale;
mod templates;
mod trust;
mod wsexport;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use anyhow::bail;

use env::{lock, VmSpec};
pub use env::{Env, GATEWAY};

/// What a scenario concluded.
pub enum Outcome {
    Pass,
    Skip(String),
}

/// When a scenario runs (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum When {
    First,
    Together,
    Last,
}

/// Scenarios of the middle phase that run at once.
pub const WORKERS: usize = 4;

pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&Env) -> anyhow::Result<Outcome>,
    pub when: When,
    /// VMs the runner obtains from the fixture before `run` starts.
    pub vms: &'static [&'static VmSpec],
    /// VMs `run` creates itself; in a run with it, the scenarios that use
    /// them wait for it, and they are not made ahead.
    pub makes: &'static [&'static str],
    /// Starts before the other middle-phase scenarios: it boots the same VM
    /// several times in a row, which would otherwise end the run late.
    pub early: bool,
}

impl Scenario {
    pub const fn first(name: &'static str, run: fn(&Env) -> anyhow::Result<Outcome>) -> Self {
        Scenario {
            name,
            run,
            when: When::First,
            vms: &[],
            makes: &[],
            early: false,
        }
    }

    pub const fn together(name: &'static str, run: fn(&Env) -> anyhow::Result<Outcome>) -> Self {
        Scenario {
            when: When::Together,
            ..Self::first(name, run)
        }
    }

    pub const fn last(name: &'static str, run: fn(&Env) -> anyhow::Result<Outcome>) -> Self {
        Scenario {
            when: When::Last,
            ..Self::first(name, run)
        }
    }

    pub const fn vms(self, vms: &'static [&'static VmSpec]) -> Self {
        Scenario { vms, ..self }
    }

    pub const fn makes(self, makes: &'static [&'static str]) -> Self {
        Scenario { makes, ..self }
    }

    pub const fn early(self) -> Self {
        Scenario {
            early: true,
            ..self
        }
    }
}

thread_local! {
    static NOTES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Run once more after every scenario, with nothing else running: each VM
/// left must have exactly what its state allows, and nothing else may be.
const FINAL_LEAK_CHECK: Scenario = Scenario::last("leak check at the end", |env| {
    let leaks = leakcheck::check(env, true)?;
    anyhow::ensure!(leaks.is_empty(), "leaked: {}", leaks.join("; "));
    Ok(Outcome::Pass)
});

/// A line for the running scenario's report (printed under its result).
pub fn note(line: impl Into<String>) {
    NOTES.with(|n| n.borrow_mut().push(line.into()));
}

struct Options {
    filter: Option<String>,
    image_dir: Option<PathBuf>,
    coverage: bool,
    baseline: Option<PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        filter: None,
        image_dir: None,
        coverage: false,
        baseline: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => o.filter = it.next().cloned(),
            "--keep-image" => o.image_dir = it.next().map(PathBuf::from),
            "--coverage" => o.coverage = true,
            "--baseline" => o.baseline = it.next().map(PathBuf::from),
            other => bail!("unknown smoke option {other:?}; use --filter S, --keep-image DIR, --coverage, --baseline FILE"),
        }
    }
    Ok(o)
}

/// Scenario counts; printed last, as the runner's summary line.
#[derive(Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// `cargo xtask smoke`.
pub fn main(args: &[String]) -> anyhow::Result<i32> {
    let summary = run(args)?;
    println!("{summary}");
    Ok(if summary.failed == 0 { 0 } else { 1 })
}

/// The scenarios a run selects: those whose name contains the filter, and
/// the ones a filtered run still needs.
fn select(filter: Option<&str>) -> Vec<&'static Scenario> {
    scenarios::ALL
        .iter()
        .filter(|s| {
            filter.is_none_or(|f| s.name.contains(f) || scenarios::ALWAYS.contains(&s.name))
        })
        .collect()
}

/// The VMs to make ahead for `chosen` (in the table's order): each
/// declared VM once, as the first scenario to use it declares it; not the
/// VMs a scenario makes itself (making them ahead would make its create
/// fail; the others wait for it).
fn fixtures<'a>(chosen: impl Iterator<Item = &'a Scenario> + Clone) -> Vec<&'static VmSpec> {
    let made: Vec<&str> = chosen
        .clone()
        .flat_map(|s| s.makes.iter().copied())
        .collect();
    let mut specs: Vec<&'static VmSpec> = Vec::new();
    for s in chosen {
        for spec in s.vms {
            if !made.contains(&spec.name) && !specs.iter().any(|k| k.name == spec.name) {
                specs.push(spec);
            }
        }
    }
    specs
}

/// `s` must wait for `t` (earlier in the table) to end: `t` makes a VM `s`
/// uses, or leaves one of its VMs in the state `s` starts from (`s`
/// declares it differently).
fn waits_for(s: &Scenario, t: &Scenario) -> bool {
    s.vms
        .iter()
        .any(|v| t.makes.contains(&v.name) || t.vms.iter().any(|w| w.name == v.name && *w != *v))
}

/// Who holds which VM in the middle phase, and who may start.
struct Board {
    /// Scenarios not started yet, the early ones first.
    queue: VecDeque<&'static Scenario>,
    /// VM name: how many hold it shared, or `None` when one holds it alone.
    held: HashMap<&'static str, Option<usize>>,
    /// Scenario: the scenarios that must end before it starts.
    after: HashMap<&'static str, Vec<&'static str>>,
    /// VMs still to be made ahead: their scenarios wait, so that VMs boot
    /// in the order the queue wants them.
    coming: Vec<&'static str>,
    done: Vec<&'static str>,
}

impl Board {
    /// `chosen` in the table's order.
    fn new(chosen: &[&'static Scenario]) -> Board {
        let after = chosen
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let before = chosen[..i].iter().filter(|t| waits_for(s, t));
                (s.name, before.map(|t| t.name).collect())
            })
            .collect();
        let mut queue = chosen.to_vec();
        queue.sort_by_key(|s| !s.early);
        Board {
            queue: queue.into(),
            held: HashMap::new(),
            after,
            coming: Vec::new(),
            done: Vec::new(),
        }
    }

    fn vms_free(&self, specs: &[&VmSpec]) -> bool {
        specs.iter().all(|v| match self.held.get(v.name) {
            None => true,
            Some(Some(_)) => v.shared,
            Some(None) => false,
        })
    }

    fn hold(&mut self, specs: &[&'static VmSpec]) {
        for v in specs {
            let e = self.held.entry(v.name).or_insert(Some(0));
            *e = if v.shared { e.map(|n| n + 1) } else { None };
        }
    }

    fn release(&mut self, specs: &[&'static VmSpec]) {
        for v in specs {
            match self.held.get(v.name).copied().flatten() {
                Some(n) if n > 1 => {
                    self.held.insert(v.name, Some(n - 1));
                }
                _ => {
                    self.held.remove(v.name);
                }
            }
        }
    }

    /// The first waiting scenario that may start, taken off the queue with
    /// its VMs held.
    fn next(&mut self) -> Option<&'static Scenario> {
        let i = self.queue.iter().position(|s| {
            self.vms_free(s.vms)
                && s.vms.iter().all(|v| !self.coming.contains(&v.name))
                && self.after[s.name].iter().all(|t| self.done.contains(t))
        })?;
        let s = self.queue.remove(i)?;
        self.hold(s.vms);
        Some(s)
    }

    fn finish(&mut self, s: &'static Scenario) {
        self.release(s.vms);
        self.done.push(s.name);
    }
}

/// Runs the suite; the caller prints the summary.
pub fn run(args: &[String]) -> anyhow::Result<Summary> {
    let opts = parse(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("smoke: skipped every scenario: they need root (network namespaces, taps, VMs)");
        return Ok(Summary {
            passed: 0,
            failed: 0,
            skipped: scenarios::ALL.len(),
        });
    }
    if opts.baseline.is_some() && !opts.coverage {
        bail!("--baseline goes with --coverage");
    }
    let coverage = if opts.coverage {
        Some(crate::coverage::prepare()?)
    } else {
        None
    };
    let banger = match &coverage {
        Some(c) => c.binary.clone(),
        None => crate::sh::build_banger(false)?,
    };
    let mut env = Env::start(&banger, opts.image_dir.as_deref())?;
    let chosen = select(opts.filter.as_deref());
    let started = Instant::now();
    let run = Run {
        env: &env,
        summary: Mutex::new(Summary::default()),
        suite: started,
        ahead: Mutex::new(HashMap::new()),
    };
    let phase = |when: When| chosen.iter().copied().filter(move |s| s.when == when);
    for s in phase(When::First) {
        run.one(s);
    }
    // The middle phase: workers take scenarios in order (the early ones
    // first) as their VMs come free; meanwhile every VM of this phase and
    // the last is made, in the order the workers will want them.
    let together: Vec<&Scenario> = phase(When::Together).collect();
    let board = Mutex::new(Board::new(&together));
    let mut specs = fixtures(together.iter().copied().chain(phase(When::Last)));
    {
        let b = lock(&board);
        let first_use = |v: &VmSpec| {
            b.queue
                .iter()
                .position(|s| s.vms.iter().any(|w| w.name == v.name))
                .unwrap_or(usize::MAX)
        };
        specs.sort_by_key(|v| first_use(v));
    }
    lock(&board).coming = specs.iter().map(|v| v.name).collect();
    if !specs.is_empty() {
        eprintln!(
            "--- {} scenarios, {WORKERS} at a time; making {} VMs ahead, {} booting at a time",
            together.len(),
            specs.len(),
            env.boot_slots
        );
    }
    let changed = Condvar::new();
    let wanted = Mutex::new(VecDeque::from(specs));
    std::thread::scope(|scope| {
        for _ in 0..env.boot_slots {
            scope.spawn(|| loop {
                let Some(spec) = lock(&wanted).pop_front() else {
                    break;
                };
                let free = {
                    let mut b = lock(&board);
                    let free = b.vms_free(&[spec]);
                    if free {
                        b.hold(&[spec]);
                    }
                    free
                };
                // A failure here is the scenario's to report: it asks the
                // fixture again and gets the error. Not free: a scenario
                // holds it (and has made it).
                if free {
                    match env::ahead(|| env.vm(spec)) {
                        Ok(how) if how != "ready" => {
                            lock(&run.ahead).insert(spec.name, how);
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("--- making {} failed: {e:#}", spec.name),
                    }
                }
                let mut b = lock(&board);
                if free {
                    b.release(&[spec]);
                }
                b.coming.retain(|n| *n != spec.name);
                drop(b);
                changed.notify_all();
            });
        }
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let s = {
                    let mut b = lock(&board);
                    loop {
                        if b.queue.is_empty() {
                            break None;
                        }
                        if let Some(s) = b.next() {
                            break Some(s);
                        }
                        b = changed.wait(b).unwrap_or_else(PoisonError::into_inner);
                    }
                };
                let Some(s) = s else { break };
                // Ends the scenario on the board even if reporting panics,
                // so that no worker waits for it for ever.
                let _end = Ender(&board, &changed, s);
                run.one(s);
            });
        }
    });
    for s in phase(When::Last) {
        run.one(s);
    }
    run.one(&FINAL_LEAK_CHECK);
    let summary = run
        .summary
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    env.teardown();
    drop(env);
    println!("smoke suite: {:.0}s", started.elapsed().as_secs_f64());
    if let Some(c) = &coverage {
        let out = crate::sh::root().join("target").join("smoke-coverage.json");
        let table = crate::coverage::report(c, &out)?;
        crate::coverage::print(&table, opts.baseline.as_deref())?;
        println!("coverage written to {}", out.display());
    }
    Ok(summary)
}

/// Marks a scenario ended on the board when dropped.
struct Ender<'a>(&'a Mutex<Board>, &'a Condvar, &'static Scenario);

impl Drop for Ender<'_> {
    fn drop(&mut self) {
        lock(self.0).finish(self.2);
        self.1.notify_all();
    }
}

/// One run's shared state.
struct Run<'a> {
    env: &'a Env,
    summary: Mutex<Summary>,
    suite: Instant,
    /// What making a VM ahead took, by VM (for the reports).
    ahead: Mutex<HashMap<&'static str, String>>,
}

impl Run<'_> {
    /// Runs one scenario: obtains its VMs, runs it, prints its report in
    /// one piece and counts it.
    fn one(&self, s: &Scenario) {
        let env = self.env;
        eprintln!("--- {}", s.name);
        let at = self.suite.elapsed().as_secs_f64();
        NOTES.with(|n| n.borrow_mut().clear());
        let t = Instant::now();
        // Several VMs are made at once.
        let made: Vec<anyhow::Result<String>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = s
                .vms
                .iter()
                .map(|spec| scope.spawn(|| env.vm(spec)))
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the fixture panicked")))
                })
                .collect()
        });
        let mut got = Vec::new();
        let mut ready = Ok(());
        for (spec, m) in s.vms.iter().zip(made) {
            match m {
                Ok(how) => match lock(&self.ahead).get(spec.name) {
                    Some(ahead) if how == "ready" => {
                        got.push(format!("{} made ahead: {ahead}", spec.name))
                    }
                    _ => got.push(format!("{} {how}", spec.name)),
                },
                Err(e) if ready.is_ok() => ready = Err(e.context(format!("making {}", spec.name))),
                Err(_) => {}
            }
        }
        let waited = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let result = ready.and_then(|()| {
            std::panic::catch_unwind(|| (s.run)(env)).unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|m| m.to_string()))
                    .unwrap_or_default();
                bail!("panicked: {msg}")
            })
        });
        // Whatever the scenario did, nothing may be left that no VM owns.
        let result = result.and_then(|outcome| match leakcheck::check(env, false) {
            Ok(leaks) if leaks.is_empty() => Ok(outcome),
            Ok(leaks) => bail!("leaked: {}", leaks.join("; ")),
            Err(e) => Err(e.context("leak check")),
        });
        let secs = t.elapsed().as_secs_f64();
        let name = s.name;
        let mut report = match &result {
            Ok(Outcome::Pass) => format!("[ok]   {name} ({secs:.1}s)\n"),
            Ok(Outcome::Skip(why)) => format!("[skip] {name}: {why}\n"),
            Err(e) => format!("[FAIL] {name} ({secs:.1}s): {e:#}\n"),
        };
        if s.when != When::First {
            report.push_str(&format!("       started at {at:.0}s"));
            if !s.vms.is_empty() {
                report.push_str(&format!("; its VMs took {waited:.1}s: {}", got.join("; ")));
            }
            report.push('\n');
        }
        for n in NOTES.with(|n| n.take()) {
            report.push_str(&format!("       {n}\n"));
        }
        if result.is_err() {
            let vms: Vec<&str> = s
                .vms
                .iter()
                .map(|v| v.name)
                .chain(s.makes.iter().copied())
                .collect();
            report.push_str(&env.diagnostics(&vms));
        }
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(report.as_bytes());
            let _ = out.flush();
        }
        let mut sum = lock(&self.summary);
        match result {
            Ok(Outcome::Pass) => sum.passed += 1,
            Ok(Outcome::Skip(_)) => sum.skipped += 1,
            Err(_) => sum.failed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_keeps_the_image_build() {
        let names: Vec<&str> = select(Some("vm stop/start"))
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["image build", "vm stop/start keeps guest data"]);
        assert_eq!(select(None).len(), scenarios::ALL.len());
    }

    #[test]
    fn fixtures_come_once_and_not_what_a_scenario_makes() {
        let names = |filter| -> Vec<&str> {
            fixtures(select(Some(filter)).iter().copied())
                .iter()
                .map(|s| s.name)
                .collect()
        };
        let all = names("");
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        // `vm create` makes smoke-a in a whole run; alone, its users get it
        // from the fixture.
        assert!(!all.contains(&"smoke-a"), "{all:?}");
        assert_eq!(names("vm list"), ["smoke-a"]);
    }

    /// Scenarios in the table's order, by name.
    fn together(names: &[&str]) -> Vec<&'static Scenario> {
        scenarios::ALL
            .iter()
            .filter(|s| s.when == When::Together && names.iter().any(|n| s.name.starts_with(n)))
            .collect()
    }

    #[test]
    fn the_board_shares_only_the_shared_vm_and_keeps_the_order() {
        let mut b = Board::new(&together(&[
            "vm create",
            "vm list",
            "vm ssh",
            "vm stop/start",
            "vm restart",
            "workspace prepare (default",
            "workspace export (plain)",
            "workspace export --base",
        ]));
        let mut next = || b.next().map(|s| s.name);
        // stop/start is early; list and ssh wait for create (it makes
        // smoke-a), restart for stop/start (same VM, held alone), the
        // exports for prepare.
        assert_eq!(next(), Some("vm stop/start keeps guest data"));
        assert_eq!(next(), Some("vm create"));
        assert_eq!(next(), Some("workspace prepare (default overlay mode)"));
        assert_eq!(next(), None);
        let find = |n: &str| {
            scenarios::ALL
                .iter()
                .find(|s| s.name.starts_with(n))
                .expect(n)
        };
        b.finish(find("vm create"));
        assert_eq!(b.next().map(|s| s.name), Some("vm list and show"));
        assert_eq!(
            b.next().map(|s| s.name),
            Some("vm ssh: strict pinned host key, exit code passes")
        );
        b.finish(find("workspace prepare (default"));
        assert_eq!(
            b.next().map(|s| s.name),
            Some("workspace export (plain) of uncommitted edits")
        );
        assert!(b.next().is_none());
        b.finish(find("workspace export (plain)"));
        b.finish(find("vm stop/start"));
        assert_eq!(
            b.next().map(|s| s.name),
            Some("workspace export --base-commit includes guest commits")
        );
        assert_eq!(
            b.next().map(|s| s.name),
            Some("vm restart gives a fresh boot_id")
        );
        assert!(b.queue.is_empty());
    }

    #[test]
    fn a_vm_made_ahead_is_waited_for() {
        let mut b = Board::new(&together(&["workspace prepare (default", "vm restart"]));
        b.coming = vec!["smoke-ws"];
        assert_eq!(
            b.next().map(|s| s.name),
            Some("vm restart gives a fresh boot_id")
        );
        assert!(b.next().is_none());
        b.coming.clear();
        assert_eq!(
            b.next().map(|s| s.name),
            Some("workspace prepare (default overlay mode)")
        );
    }
}
