//! Asking apt: the policy report a plan is made from, and `apt-get` runs
//! (simulated or real). Output is read in the C locale.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::{policy, Policy};

/// A failed apt call, with apt's own last words.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("running {command}: {source}; is this a Debian host with apt?")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {reason}")]
    Failed {
        command: String,
        status: String,
        reason: String,
    },
}

fn apt_command(program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

fn describe(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs and captures; fails on a non-zero exit with apt's error lines.
fn capture(program: &str, args: &[String]) -> Result<String, AptError> {
    let command = describe(program, args);
    let out = apt_command(program, args)
        .output()
        .map_err(|source| AptError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(AptError::Failed {
            command,
            status: out.status.to_string(),
            reason: last_error(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt's `E:` lines, joined; else its last line.
fn last_error(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("E: "))
        .collect();
    if errors.is_empty() {
        stderr.trim().lines().last().unwrap_or("").to_string()
    } else {
        errors.join("; ")
    }
}

/// `apt-cache policy` over every package banger needs.
pub fn policies() -> Result<BTreeMap<String, Policy>, AptError> {
    let names: Vec<String> = crate::query_names().iter().map(|s| s.to_string()).collect();
    let mut args = vec!["policy".to_string()];
    args.extend(names);
    Ok(policy::parse(&capture("apt-cache", &args)?))
}

/// `apt-get ARGS` with the output shown (a real install); fails with
/// apt's error lines.
pub fn run_visible(args: &[String]) -> Result<(), AptError> {
    let command = describe("apt-get", args);
    let status = apt_command("apt-get", args)
        .status()
        .map_err(|source| AptError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !status.success() {
        return Err(AptError::Failed {
            command,
            status: status.to_string(),
            reason: "see apt's messages above".to_string(),
        });
    }
    Ok(())
}

/// `apt-get ARGS` quietly (a simulation, or `update`); returns its output.
pub fn run_quiet(args: &[String]) -> Result<String, AptError> {
    capture("apt-get", args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_apt_error_lines() {
        let stderr = "NOTE: This is only a simulation!\nE: Version '1:7.2+dfsg-7+deb12u18+b3' for 'qemu-system-data' was not found\n";
        assert_eq!(
            last_error(stderr),
            "Version '1:7.2+dfsg-7+deb12u18+b3' for 'qemu-system-data' was not found"
        );
        assert_eq!(last_error("W: one\nsomething else\n"), "something else");
    }
}
