//! Runs host programs with argument vectors (never a shell string) and turns
//! failures into errors that name the command and its stderr.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("{program} is not installed or not on PATH; `banger doctor` says how to install it")]
    Missing { program: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("running `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
}

fn describe(program: &str, args: &[&OsStr]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `program args...`, returns stdout on success.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, CmdError> {
    let out = output(program, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs and returns the raw output, failing on a non-zero exit.
pub fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output, CmdError> {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(program, &args, e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim().lines().last().unwrap_or("").to_string();
        return Err(CmdError::Failed {
            command: describe(program, &args),
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(out)
}

/// True when `command` exits 0 within `timeout`; killed (and reaped)
/// otherwise. For probes that may hang, such as booting a test guest.
pub fn succeeds_within(command: &mut Command, timeout: std::time::Duration) -> bool {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Runs and reports only whether it exited zero (for probes like `ip link show`).
pub fn succeeds<S: AsRef<OsStr>>(program: &str, args: &[S]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub(crate) fn spawn_error(program: &str, args: &[&OsStr], e: std::io::Error) -> CmdError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CmdError::Missing {
            program: program.to_string(),
        }
    } else {
        CmdError::Io {
            command: describe(program, args),
            source: e,
        }
    }
}

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
