//! The smoke suite: real CLI, real daemon, real VMs, all inside a network
//! namespace the suite creates and removes. Each scenario prints its name,
//! result and time; the run ends with `N passed, M failed, K skipped`.

mod env;
mod scenarios;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;

pub use env::Env;

/// What a scenario concluded.
pub enum Outcome {
    Pass,
    Skip(String),
}

pub type Scenario = (&'static str, fn(&mut Env) -> anyhow::Result<Outcome>);

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
        None => crate::sh::build_banger()?,
    };
    let mut env = Env::start(&banger, opts.image_dir.as_deref())?;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let started = Instant::now();
    for (name, run) in scenarios::ALL {
        if let Some(f) = &opts.filter {
            if !name.contains(f.as_str()) && !scenarios::ALWAYS.contains(name) {
                continue;
            }
        }
        eprintln!("--- {name}");
        let t = Instant::now();
        let result = run(&mut env);
        let secs = t.elapsed().as_secs_f64();
        match result {
            Ok(Outcome::Pass) => {
                passed += 1;
                println!("[ok]   {name} ({secs:.1}s)");
            }
            Ok(Outcome::Skip(why)) => {
                skipped += 1;
                println!("[skip] {name}: {why}");
            }
            Err(e) => {
                failed += 1;
                println!("[FAIL] {name} ({secs:.1}s): {e:#}");
                env.print_diagnostics();
            }
        }
    }
    env.teardown();
    drop(env);
    println!("smoke suite: {:.0}s", started.elapsed().as_secs_f64());
    if let Some(c) = &coverage {
        let out = crate::sh::root().join("target").join("smoke-coverage.json");
        let table = crate::coverage::report(c, &out)?;
        crate::coverage::print(&table, opts.baseline.as_deref())?;
        println!("coverage written to {}", out.display());
    }
    Ok(Summary {
        passed,
        failed,
        skipped,
    })
}
