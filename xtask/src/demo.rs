//! `cargo xtask demo`: the whole day of a user, in a fresh namespace, with
//! everything removed at the end.

use std::time::Instant;

use crate::smoke::Env;
use crate::{setup, sh};

pub fn run() -> anyhow::Result<i32> {
    setup::run()?;
    let banger = sh::build_banger(false)?;
    // A shared image cache keeps repeated demos fast; the first one builds it.
    let cache = std::path::PathBuf::from("/var/cache/banger-demo/images");
    std::fs::create_dir_all(&cache)?;
    say("starting a daemon in a fresh network namespace");
    let mut env = Env::start(&banger, Some(&cache))?;
    let result = (|| -> anyhow::Result<()> {
        // The current version (`default/current`), or an image built
        // before versions (files directly in `default/`).
        let built = ["default/current/manifest.json", "default/manifest.json"];
        if !built.iter().any(|m| cache.join(m).exists()) {
            say("building the default guest image (first run only; about 2 minutes)");
            show(&env, &["image", "build"])?;
        }
        say("banger vm create --name demo");
        let t = Instant::now();
        env.create("demo", &[])?;
        say(&format!(
            "the VM answered SSH {:.1}s after create",
            t.elapsed().as_secs_f64()
        ));
        say("banger vm exec demo -- uname -a; cat /etc/os-release | head -1");
        show(
            &env,
            &[
                "vm",
                "exec",
                "demo",
                "--",
                "sh",
                "-c",
                "uname -a; head -1 /etc/os-release",
            ],
        )?;
        say("banger vm list");
        show(&env, &["vm", "list"])?;
        say("banger vm stop demo");
        show(&env, &["vm", "stop", "demo"])?;
        say("banger vm delete demo");
        show(&env, &["vm", "delete", "demo"])?;
        Ok(())
    })();
    say("cleaning up: daemon, namespace, state");
    env.teardown();
    drop(env);
    result?;
    say("done");
    Ok(0)
}

fn say(msg: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("\x1b[1m==> {msg}\x1b[0m");
    } else {
        eprintln!("==> {msg}");
    }
}

fn show(env: &Env, args: &[&str]) -> anyhow::Result<()> {
    let out = env.banger(args);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "`banger {}` failed", args.join(" "));
    Ok(())
}
