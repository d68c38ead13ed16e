//! `banger vm exec` options with Docker's meanings: `-w DIR` runs the
//! command in DIR, `-e K=V` sets variables, `-i` passes stdin through, `-t`
//! gives the command a terminal. The command line sent to the guest's shell
//! is built here, every user-given piece quoted, so neither a value nor a
//! directory nor an argument can inject shell code.

use anyhow::bail;

/// The exit status a command gets when its working directory is missing
/// (as `docker exec -w` reports a failed chdir).
pub const WORKDIR_MISSING: i32 = 126;

/// What `vm exec` was asked besides the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub workdir: Option<String>,
    /// Validated `NAME=VALUE` pairs, in the order given.
    pub env: Vec<(String, String)>,
    pub interactive: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Checks `-w` and `-e` before anything runs. `-e NAME` alone takes
    /// NAME's value from this environment (left out when it is unset).
    pub fn new(
        workdir: Option<String>,
        env: &[String],
        interactive: bool,
        tty: bool,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = &workdir {
            if dir.is_empty() || dir.contains('\0') {
                bail!("-w {dir:?}: not a directory path; pass a directory in the guest, such as /root/repo");
            }
        }
        let mut pairs = Vec::new();
        for item in env {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (item.as_str(), None),
            };
            if !is_var_name(name) {
                bail!("-e {item:?}: {name:?} is not a variable name; use NAME=VALUE, NAME of letters, digits and _ not starting with a digit");
            }
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                bail!("-e {name}: a value cannot hold a NUL byte");
            }
            if let Some(value) = value.or_else(|| lookup(name)) {
                pairs.push((name.to_string(), value));
            }
        }
        Ok(ExecOptions {
            workdir,
            env: pairs,
            interactive,
            tty,
        })
    }

    /// The ssh options: a terminal or none, stdin passed through or not.
    pub fn ssh_flags(&self) -> Vec<&'static str> {
        let mut flags = vec![if self.tty { "-tt" } else { "-T" }];
        if !self.interactive {
            flags.push("-n");
        }
        flags
    }

    /// The command line for the guest's shell: change directory, export the
    /// variables, then the command, each piece quoted.
    pub fn remote_command(&self, command: &[String]) -> String {
        let mut line = String::new();
        if let Some(dir) = &self.workdir {
            let q = quote(dir);
            line.push_str(&format!(
                "cd -- {q} 2>/dev/null || {{ echo \"banger: -w \"{q}\": no such directory in the guest\" >&2; exit {WORKDIR_MISSING}; }}; "
            ));
        }
        for (name, value) in &self.env {
            line.push_str(&format!("export {name}={}; ", quote(value)));
        }
        line.push_str(&shell_join(command));
        line
    }
}

/// A POSIX shell variable name.
fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `s` as one shell word: bare when it is plainly safe, else in single
/// quotes (a quote inside written `'\''`).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quotes each argument for the guest's shell so argv survives ssh. The
/// first is always in quotes: bare, a word such as `A=1` or `if` would be
/// an assignment or a keyword to the shell, not the program to run.
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .enumerate()
        .map(|(i, a)| match i {
            0 => format!("'{}'", a.replace('\'', r"'\''")),
            _ => quote(a),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Runs `line` with the local `sh`, as the guest's shell would.
    fn sh(line: &str) -> (i32, String, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    #[test]
    fn shell_join_keeps_argv() {
        let args = strings(&["sh", "-c", "echo 'hi' there; exit 3", ""]);
        let (_, out, _) = sh(&format!("printf '%s|' {}", shell_join(&args)));
        assert_eq!(out, "sh|-c|echo 'hi' there; exit 3||");
    }

    #[test]
    fn values_and_directories_cannot_inject_shell_code() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("pwned");
        let evil = format!("$(touch {0}); `touch {0}`; ' ; touch {0}", canary.display());
        let weird_dir = dir.path().join("a dir; $(touch x) 'q'");
        std::fs::create_dir(&weird_dir).unwrap();
        let opts = ExecOptions::new(
            Some(weird_dir.display().to_string()),
            &[format!("EVIL={evil}"), "EMPTY=".into(), "EQ=a=b".into()],
            false,
            false,
            |_| None,
        )
        .unwrap();
        let cmd = strings(&[
            "sh",
            "-c",
            r#"printf '%s|%s|%s|%s' "$PWD" "$EVIL" "$EMPTY" "$EQ""#,
        ]);
        let (code, out, err) = sh(&opts.remote_command(&cmd));
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("{}|{evil}||a=b", weird_dir.display()));
        assert!(!canary.exists(), "a value ran as code");
    }

    #[test]
    fn the_program_is_never_an_assignment_or_a_keyword() {
        let opts = ExecOptions::default();
        for first in ["FOO=bar", "if", "while", "{", "!"] {
            let (code, out, err) = sh(&opts.remote_command(&strings(&[first, "echo", "ran"])));
            assert_eq!(code, 127, "{first}: {out}{err}");
            assert_eq!(out, "", "{first}");
        }
        let (code, out, _) = sh(&opts.remote_command(&strings(&["echo", "it's"])));
        assert_eq!((code, out.as_str()), (0, "it's\n"));
    }

    #[test]
    fn a_missing_workdir_exits_126_and_says_so() {
        let opts =
            ExecOptions::new(Some("/no/such dir".into()), &[], false, false, |_| None).unwrap();
        let (code, out, err) = sh(&opts.remote_command(&strings(&["echo", "ran"])));
        assert_eq!(code, WORKDIR_MISSING);
        assert_eq!(out, "");
        assert!(err.contains("-w /no/such dir: no such directory"), "{err}");
    }

    #[test]
    fn exit_codes_pass_through_the_prefix() {
        let opts =
            ExecOptions::new(Some("/".into()), &["A=1".into()], false, false, |_| None).unwrap();
        let (code, _, _) = sh(&opts.remote_command(&strings(&["sh", "-c", "exit 7"])));
        assert_eq!(code, 7);
    }

    #[test]
    fn bad_names_are_refused_and_bare_names_come_from_here() {
        for bad in ["1X=y", "A-B=1", "=v", "A B=1", "$(x)=1"] {
            let e = ExecOptions::new(None, &[bad.into()], false, false, |_| None).unwrap_err();
            assert!(e.to_string().contains("not a variable name"), "{e}");
        }
        let opts = ExecOptions::new(None, &["HOMEY".into(), "UNSET".into()], false, false, |n| {
            (n == "HOMEY").then(|| "here".to_string())
        })
        .unwrap();
        assert_eq!(opts.env, vec![("HOMEY".into(), "here".into())]);
        assert!(ExecOptions::new(Some(String::new()), &[], false, false, |_| None).is_err());
    }

    #[test]
    fn ssh_flags_follow_docker() {
        let mut o = ExecOptions::default();
        assert_eq!(o.ssh_flags(), ["-T", "-n"]);
        o.interactive = true;
        assert_eq!(o.ssh_flags(), ["-T"]);
        o.tty = true;
        assert_eq!(o.ssh_flags(), ["-tt"]);
        // Without -i, a command gets no stdin even with a terminal.
        o.interactive = false;
        assert_eq!(o.ssh_flags(), ["-tt", "-n"]);
    }
}
