//! `vm cp`: a tar streamed into a guest and placed where `docker cp` would
//! put it, or a tar of a guest path streamed out to the client. The host
//! side is the CLI's: it reads and writes host files with the user's own
//! rights, so the daemon (root) never opens a host path for `vm cp`; it
//! only moves a tar between the client and the guest, chunk by chunk
//! (bounded: nothing holds a copy whole), as an operation on the VM.
//!
//! Into a guest, a copy that lands at a new path is extracted beside it
//! first (`.banger-cp.OP`) and renamed into place only once the client
//! sent the whole upload: a failed copy leaves nothing there. A copy into
//! an existing directory merges as it is extracted; if it fails half way,
//! what was extracted stays.

use std::sync::Arc;
use std::time::Duration;

use super::runner::{self, Claim, OpKind};
use super::service::R;
use super::{Caller, VmError, VmRecord, VmService};
use crate::opstate::{Op, Sink};

/// An upload's decoded frames, in order; closed after the last, an error
/// when the upload failed.
pub type Frames = tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>;

/// What `vm cp` into a VM was asked (see `Request::VmCpIn`).
#[derive(Debug, Clone)]
pub struct CpIn {
    pub vm: String,
    pub dest: String,
    pub source_name: String,
    pub source_is_dir: bool,
    pub contents: bool,
}

const CP_IN: OpKind = OpKind {
    name: "vm_cp_in",
    check: runner::running,
    claim: Claim::Shared,
    needs_vmm: true,
};
const CP_OUT: OpKind = OpKind {
    name: "vm_cp_out",
    check: runner::running,
    claim: Claim::Shared,
    needs_vmm: true,
};

/// How long one copy may take (gigabytes under emulation are slow; `vm
/// kill` still ends one at any time).
const CP_DEADLINE: Duration = Duration::from_secs(3600);
/// How long placing or cleaning up a copy may take.
const STEP_DEADLINE: Duration = Duration::from_secs(120);

/// The longest guest path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

/// Extracts the tar on stdin where `docker cp` would put it: into `$1` when
/// it is a directory (`$3` = 1: its contents, the top entry dropped), else
/// into `$1`'s parent under `$5`, to be renamed by [`CP_IN_PLACE`]. Says
/// `merged` or `staged`. Exit 3: the caller's mistake.
const CP_IN_SCRIPT: &str = r#"d=$1 n=$2
fail() { echo "banger: $*" >&2; exit 3; }
untar() { tar -x -f - -p --no-same-owner "$@"; }
if [ -d "$d" ]; then
  if [ "$3" = 1 ]; then untar -C "$d" --strip-components=1 || exit 1
  else untar -C "$d" || exit 1; fi
  echo merged; exit 0
fi
case $d in */) fail "$d: no such directory in the guest";; esac
p=$(dirname -- "$d")
[ -d "$p" ] || fail "$p: no such directory in the guest"
if [ "$4" = 1 ] && { [ -e "$d" ] || [ -L "$d" ]; }; then
  fail "$d exists and is not a directory; cannot copy a directory over it"
fi
mkdir -m 700 -- "$p/$5" || exit 1
untar -C "$p/$5" || { rm -rf -- "$p/$5"; exit 1; }
[ -e "$p/$5/$n" ] || [ -L "$p/$5/$n" ] || { rm -rf -- "$p/$5"; echo "banger: the upload held no $n" >&2; exit 1; }
echo staged
"#;

/// Renames the staged `$2` to `$1` and removes the staging directory `$3`.
const CP_IN_PLACE: &str = r#"s=$(dirname -- "$1")/$3
mv -fT -- "$s/$2" "$1"; r=$?
rm -rf -- "$s"
exit $r
"#;

/// Removes the staging directory `$2` beside `$1` (idempotent).
const CP_IN_CLEANUP: &str = r#"rm -rf -- "$(dirname -- "$1")/$2""#;

/// Writes a tar of `$1` to stdout: its one top entry `$1`'s base name, or
/// with `$2` = 1 the directory's entries. Exit 3: the caller's mistake.
const CP_OUT_SCRIPT: &str = r#"s=$1
fail() { echo "banger: $*" >&2; exit 3; }
[ -e "$s" ] || [ -L "$s" ] || fail "$s: no such file or directory in the guest"
if [ "$2" = 1 ]; then
  [ -d "$s" ] || fail "$s is not a directory; drop the trailing /."
  exec tar -c -f - -C "$s" .
fi
exec tar -c -f - -C "$(dirname -- "$s")" -- "$(basename -- "$s")"
"#;

/// `s` as one shell word, in single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `sh -c SCRIPT banger-cp ARGS...`, every piece quoted: the guest's shell
/// sees the arguments as data, whatever they hold.
fn sh_c(script: &str, args: &[&str]) -> String {
    let mut line = format!("sh -c {} banger-cp", quote(script));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// A guest path as given: not empty, no NUL, not too long.
fn check_guest_path(path: &str) -> R<()> {
    if path.is_empty() || path.contains('\0') || path.len() > MAX_PATH {
        return Err(VmError::InvalidArgument(format!(
            "{path:?} is not a usable guest path; give VM:PATH with PATH such as /root/file"
        )));
    }
    Ok(())
}

/// The source's base name: one path component, not `.` or `..`.
fn check_name(name: &str) -> R<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(VmError::InvalidArgument(format!(
            "{name:?} is not a file name; copy a named file or directory"
        )));
    }
    Ok(())
}

/// `path` without trailing slashes; refused when nothing named is left
/// (`/`, `.`, `..` name no entry to copy).
fn out_source(path: &str) -> R<String> {
    check_guest_path(path)?;
    let trimmed = path.trim_end_matches('/');
    let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
    if trimmed.is_empty() || last == "." || last == ".." {
        return Err(VmError::InvalidArgument(format!(
            "cannot copy {path:?} itself; name a file or directory (VM:DIR/. copies a directory's contents)"
        )));
    }
    Ok(trimmed.to_string())
}

/// A guest step's exit as an error: its last stderr line (exit 3: the
/// caller's mistake).
fn step_result(vm: &VmRecord, out: &std::process::Output) -> R<()> {
    crate::workspace::ops::script_result(vm, out.status, &out.stderr)
}

impl VmService {
    /// Copies the upload `frames` (a tar) into `req.vm`; returns where it
    /// landed and how many bytes came.
    pub async fn cp_in(
        self: &Arc<Self>,
        caller: Caller,
        req: CpIn,
        frames: Frames,
        sink: Option<Sink>,
    ) -> R<(String, u64)> {
        banger_api::validate_vm_name(&req.vm)?;
        check_guest_path(&req.dest)?;
        check_name(&req.source_name)?;
        self.refresh_all().await;
        let name = req.vm.clone();
        self.run_op(CP_IN, caller, &name, sink, async |op, vm| {
            self.cp_in_inner(op, &vm, &req, frames).await
        })
        .await
    }

    async fn cp_in_inner(
        &self,
        op: &Op,
        vm: &VmRecord,
        req: &CpIn,
        mut frames: Frames,
    ) -> R<(String, u64)> {
        let staging = format!(".banger-cp.{}", op.id);
        let command = sh_c(
            CP_IN_SCRIPT,
            &[
                &req.dest,
                &req.source_name,
                flag(req.contents),
                flag(req.source_is_dir),
                &staging,
            ],
        );
        op.phase(
            "copy",
            &format!("copying {} into {}:{}", req.source_name, vm.name, req.dest),
            10,
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let run = async {
            match tokio::time::timeout(CP_DEADLINE, self.host.guest.exec_feed(&vm.ip, &command, rx))
                .await
            {
                Ok(out) => Ok(out?),
                Err(_) => Err(VmError::Failed(format!(
                    "copying into {} took over {}s; `banger vm kill {}` stops a stuck guest",
                    vm.name,
                    CP_DEADLINE.as_secs(),
                    vm.name
                ))),
            }
        };
        let forward = async move {
            let mut sent = 0u64;
            while let Some(item) = frames.recv().await {
                let chunk = item.map_err(VmError::Failed)?;
                sent += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    return Err(VmError::Failed("the guest stopped reading the copy".into()));
                }
            }
            Ok(sent)
        };
        let (out, sent) = tokio::join!(run, forward);
        let placed = out.and_then(|out| step_result(vm, &out).map(|()| out.stdout));
        let result = match (placed, sent) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.context(format!("copying into {}", vm.name))),
            (Ok(stdout), Ok(sent)) => self.place(vm, req, &staging, &stdout, sent).await,
        };
        if let Err(e) = &result {
            if !matches!(e.root(), VmError::InvalidArgument(_)) {
                let cleanup = sh_c(CP_IN_CLEANUP, &[&req.dest, &staging]);
                if let Err(c) = self.guest_exec(vm, &cleanup, None, STEP_DEADLINE).await {
                    tracing::warn!(vm = %vm.name, "removing {staging} after a failed copy: {c}");
                }
            }
        }
        result
    }

    /// Renames a staged copy into place; returns where it is.
    async fn place(
        &self,
        vm: &VmRecord,
        req: &CpIn,
        staging: &str,
        said: &[u8],
        sent: u64,
    ) -> R<(String, u64)> {
        match String::from_utf8_lossy(said).trim() {
            "merged" if req.contents => Ok((req.dest.clone(), sent)),
            "merged" => {
                let dir = req.dest.trim_end_matches('/');
                Ok((format!("{dir}/{}", req.source_name), sent))
            }
            "staged" => {
                let command = sh_c(CP_IN_PLACE, &[&req.dest, &req.source_name, staging]);
                let out = self.guest_exec(vm, &command, None, STEP_DEADLINE).await?;
                step_result(vm, &out)?;
                Ok((req.dest.clone(), sent))
            }
            other => Err(VmError::Failed(format!(
                "the copy into {} ended with an unexpected answer {other:?}",
                vm.name
            ))),
        }
    }

    /// Streams a tar of `src` in `name` to the client (data events), chunk
    /// by chunk; returns its size in bytes.
    pub async fn cp_out(
        self: &Arc<Self>,
        caller: Caller,
        name: &str,
        src: &str,
        contents: bool,
        sink: Option<Sink>,
    ) -> R<u64> {
        banger_api::validate_vm_name(name)?;
        let src = out_source(src)?;
        self.refresh_all().await;
        self.run_op(CP_OUT, caller, name, sink, async |op, vm| {
            op.phase("copy", &format!("copying {}:{src} out", vm.name), 10);
            let command = sh_c(CP_OUT_SCRIPT, &[&src, flag(contents)]);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            let run = self.guest_exec_stream(&vm, &command, None, tx, CP_DEADLINE);
            let forward = async {
                let mut sent = 0u64;
                while let Some(chunk) = rx.recv().await {
                    if !op.data(&chunk).await {
                        return Err(VmError::Failed("the client left during the copy".into()));
                    }
                    sent += chunk.len() as u64;
                }
                Ok(sent)
            };
            let (ended, sent) = tokio::join!(run, forward);
            let (status, stderr) = ended?;
            crate::workspace::ops::script_result(&vm, status, &stderr)?;
            sent
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sh(script: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(sh_c(script, args))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(stdin);
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    fn tar_of(dir: &std::path::Path, name: &str) -> Vec<u8> {
        let out = std::process::Command::new("tar")
            .args(["-c", "-f", "-", "-C"])
            .arg(dir)
            .args(["--", name])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn paths_and_names_are_checked() {
        assert!(check_guest_path("").is_err());
        assert!(check_guest_path("a\0b").is_err());
        assert!(check_guest_path("/root/x y").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(out_source("/root/dir///").unwrap(), "/root/dir");
        for bad in ["/", "///", ".", "/root/..", "x/."] {
            assert!(out_source(bad).is_err(), "{bad:?}");
        }
    }

    /// The scripts as the guest runs them (with this host's sh and GNU
    /// tar): a new path is staged then renamed, an existing directory
    /// receives the entry, quotes in names stay data.
    #[test]
    fn the_guest_scripts_place_copies_as_docker_cp_does() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("it's $(x)")).unwrap();
        std::fs::write(src.join("it's $(x)/f"), "data").unwrap();
        let tar = tar_of(&src, "it's $(x)");
        let into = t.path().join("into");
        std::fs::create_dir(&into).unwrap();
        let into_s = into.display().to_string();

        // An existing directory: the entry lands inside it.
        let out = run_sh(CP_IN_SCRIPT, &[&into_s, "it's $(x)", "0", "1", ".s1"], &tar);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "merged");
        assert!(into.join("it's $(x)/f").exists());

        // A new path: staged beside it, then renamed.
        let new = t.path().join("new dir").display().to_string();
        let out = run_sh(CP_IN_SCRIPT, &[&new, "it's $(x)", "0", "1", ".s2"], &tar);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "staged");
        assert!(
            !std::path::Path::new(&new).exists(),
            "placed before the upload ended"
        );
        let out = run_sh(CP_IN_PLACE, &[&new, "it's $(x)", ".s2"], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(format!("{new}/f")).unwrap(), "data");
        assert!(!t.path().join(".s2").exists());

        // Mistakes: exit 3, nothing made.
        let missing = t.path().join("no/such/x").display().to_string();
        let out = run_sh(CP_IN_SCRIPT, &[&missing, "f", "0", "0", ".s3"], &tar);
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no such directory"));
        let file = into.join("it's $(x)/f").display().to_string();
        let out = run_sh(CP_IN_SCRIPT, &[&file, "it's $(x)", "0", "1", ".s4"], &tar);
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));

        // Out: a missing path is the caller's mistake; a present one tars.
        let out = run_sh(CP_OUT_SCRIPT, &[&missing, "0"], b"");
        assert_eq!(out.status.code(), Some(3));
        let out = run_sh(CP_OUT_SCRIPT, &[&new, "0"], b"");
        assert!(out.status.success());
        assert!(out.stdout.len() >= 1024, "a tar");
    }
}
