//! `banger completions SHELL` and `banger man`: shell completions and man
//! pages, generated from the same clap definition the CLI parses with, so
//! they never fall behind a verb.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;

/// The shells `banger completions` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out),
    }
}

/// Writes the top page, `banger(1)`, to `out`, ending with a COMMANDS
/// section that lists every verb (`banger vm create`, ...) with its line.
pub fn man_page(mut cmd: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    cmd.build();
    clap_mangen::Man::new(cmd.clone())
        .render(out)
        .context("rendering the man page")?;
    let mut section = String::from(".SH COMMANDS\n");
    for (path, about) in verbs(&cmd) {
        section.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(&path), roff(&about)));
    }
    out.write_all(section.as_bytes())
        .context("writing the man page")
}

/// Every runnable verb under `cmd` as (`banger vm create`, its first help
/// line), depth first, in definition order.
pub fn verbs(cmd: &clap::Command) -> Vec<(String, String)> {
    let mut all = Vec::new();
    collect(cmd, cmd.get_name(), &mut all);
    all
}

fn collect(cmd: &clap::Command, path: &str, all: &mut Vec<(String, String)>) {
    let subs: Vec<_> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        all.push((path.to_string(), about));
    }
    for sub in subs {
        collect(sub, &format!("{path} {}", sub.get_name()), all);
    }
}

/// Escapes text for roff: backslashes, hyphens, and a leading control dot.
fn roff(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    match s.chars().next() {
        Some('.') | Some('\'') => format!("\\&{s}"),
        _ => s,
    }
}

/// Writes `banger.1` and one page per verb (`banger-vm-create.1`, ...)
/// into `dir`; returns how many.
pub fn man_pages(mut cmd: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Building names each subcommand for its page (`banger-vm-create`).
    cmd.build();
    write_pages(&cmd, dir)
}

fn write_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<usize> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{name}.1"));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    clap_mangen::Man::new(cmd.clone())
        .render(&mut file)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut count = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        count += write_pages(sub, dir)?;
    }
    Ok(count)
}
