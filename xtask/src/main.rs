//! `cargo xtask`: setup, demo, test, smoke. The README's two commands are
//! `cargo xtask demo` and `cargo xtask test`.

mod bench;
mod coverage;
mod demo;
mod netns;
mod setup;
mod sh;
mod smoke;

use anyhow::bail;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup                 install what the host lacks (apt packages)
  demo                  set up, build, boot a VM in a fresh namespace, use it, clean up
  test                  setup, fmt, clippy, unit + privileged tests, then the smoke
                        suite with coverage
  bench [--only start|disk|workspace] [--runs N] [--files N] [--keep-image DIR]
                        workspace prepare/export vs tar | ssh, side by side
  smoke [--filter S] [--keep-image DIR] [--coverage [--baseline FILE]]
                        the end-to-end scenarios against real VMs; --coverage
                        reports line coverage per module from the run";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run().map(|_| 0),
        Some("demo") => demo::run(),
        Some("test") => test(&args[1..]),
        Some("smoke") => smoke::main(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The whole test suite, as CI runs it.
fn test(args: &[String]) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    setup::run()?;
    sh::step("cargo fmt --check", &["cargo", "fmt", "--all", "--check"])?;
    sh::step(
        "cargo clippy",
        &[
            "cargo",
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    sh::step(
        "unit and privileged integration tests",
        &["cargo", "test", "--workspace", "--", "--test-threads=2"],
    )?;
    // The smoke suite runs instrumented: its coverage table is part of the
    // report (target/smoke-coverage.json).
    let mut smoke_args = vec!["--coverage".to_string()];
    smoke_args.extend(args.iter().cloned());
    let summary = smoke::run(&smoke_args)?;
    println!("test: total {:.0}s", started.elapsed().as_secs_f64());
    println!("{summary}");
    if summary.failed != 0 {
        bail!("smoke suite failed");
    }
    Ok(0)
}
