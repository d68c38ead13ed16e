//! `banger vm cp SRC DEST`, one side `VM:PATH`, as `docker cp`: files and
//! directories, modes and symlinks kept (a symlink is copied as a link).
//!
//! The host side is done here, by the CLI, as the user who runs it: the
//! files copied in are read with the user's rights, and the files copied
//! out are written with them (owned by the user; set-id bits dropped; the
//! guest's tar trusted for nothing: see [`super::untar`]). The
//! daemon runs as root, so it never opens a host path for `vm cp`: it only
//! moves a tar between this process and the guest, streamed both ways in
//! bounded chunks (no size limit from memory).
//!
//! Where a copy lands: into an existing directory DEST it goes inside as
//! `DEST/NAME` (`SRC/.`: the directory's contents merge into DEST); any
//! other DEST is created or replaced, its parent must exist. Such a new
//! DEST appears only once the whole copy arrived. Relative guest paths
//! start at /root.

use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use banger_api::{client, validate_vm_name, Progress, Request};

use super::untar;
use crate::progress::ProgressLine;

/// One side of `vm cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Host(String),
    Vm { vm: String, path: String },
}

impl Side {
    /// `VM:PATH` when the part before the first `:` is a VM name; anything
    /// else is a host path (write `./a:b` for a host file with a colon).
    pub fn parse(arg: &str) -> Side {
        match arg.split_once(':') {
            Some((vm, path)) if validate_vm_name(vm).is_ok() => Side::Vm {
                vm: vm.to_string(),
                path: path.to_string(),
            },
            _ => Side::Host(arg.to_string()),
        }
    }
}

/// `path` names a directory's contents (`DIR/.`); returns it without that.
fn contents_of(path: &str) -> (bool, &str) {
    match path.strip_suffix("/.") {
        Some(dir) if !dir.is_empty() => (true, dir),
        Some(_) => (true, "/"),
        None if path == "." => (true, "."),
        None => (false, path),
    }
}

pub fn run(socket: &Path, src: &str, dest: &str) -> anyhow::Result<i32> {
    let said = match (Side::parse(src), Side::parse(dest)) {
        (Side::Host(from), Side::Vm { vm, path }) => copy_in(socket, &from, &vm, &path),
        (Side::Vm { vm, path }, Side::Host(to)) => copy_out(socket, &vm, &path, &to),
        (Side::Vm { .. }, Side::Vm { .. }) => {
            bail!("both SRC and DEST are in VMs; copy out to the host, then into the other VM")
        }
        (Side::Host(_), Side::Host(_)) => bail!(
            "neither SRC nor DEST names a VM; write one side as VM:PATH (e.g. dev:/root/file)"
        ),
    }?;
    eprintln!("{said}");
    Ok(0)
}

/// Host `from` into `vm` at `dest`; says what landed where.
pub fn copy_in(socket: &Path, from: &str, vm: &str, dest: &str) -> anyhow::Result<String> {
    validate_vm_name(vm)?;
    if dest.is_empty() {
        bail!("{vm}: no guest path; write {vm}:PATH, e.g. {vm}:/root/");
    }
    let (contents, dir) = contents_of(from);
    let source = Path::new(dir);
    let meta = std::fs::symlink_metadata(source)
        .with_context(|| format!("{from}: cannot read it here"))?;
    let name = match source.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        // `.`, `..`, `/`: the directory's own name.
        None => std::fs::canonicalize(source)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .with_context(|| format!("{from}: cannot copy it whole; name a file or directory"))?,
    };
    if contents && !meta.is_dir() {
        bail!("{from}: not a directory; drop the trailing /.");
    }
    let req = Request::VmCpIn {
        name: vm.to_string(),
        dest: dest.to_string(),
        source_name: name.clone(),
        source_is_dir: meta.is_dir(),
        contents,
    };
    let mut line = ProgressLine::new();
    let answer: anyhow::Result<serde_json::Value> = client::call_uploading(
        socket,
        &req,
        |w| {
            let mut counted = Counted::new(w, &mut line, format!("to {vm}:{dest}"));
            let mut tar = tar::Builder::new(&mut counted);
            tar.follow_symlinks(false);
            if meta.is_dir() {
                tar.append_dir_all(&name, source)?;
            } else {
                tar.append_path_with_name(source, &name)?;
            }
            tar.finish()
        },
        |_| {},
        |_| Ok(()),
    )
    .map_err(Into::into);
    line.finish();
    let answer = answer?;
    Ok(format!(
        "copied {from} to {vm}:{} ({} bytes of tar)",
        answer["path"].as_str().unwrap_or(dest),
        answer["bytes"]
    ))
}

/// Where a copy out lands on the host.
enum Landing {
    /// Extracted into this existing directory.
    Into(PathBuf),
    /// Extracted into `staging`, then its entry renamed to `dest`.
    Rename { staging: PathBuf, dest: PathBuf },
}

/// `path` in `vm` to host `to`; says what landed where.
pub fn copy_out(socket: &Path, vm: &str, path: &str, to: &str) -> anyhow::Result<String> {
    validate_vm_name(vm)?;
    if path.is_empty() {
        bail!("{vm}: no guest path; write {vm}:PATH, e.g. {vm}:/root/file");
    }
    let (contents, src) = contents_of(path);
    let trimmed = src.trim_end_matches('/');
    let name = trimmed.rsplit('/').next().unwrap_or(trimmed).to_string();
    let dest = PathBuf::from(to);
    let landing = if dest.is_dir() {
        Landing::Into(dest.clone())
    } else {
        if to.ends_with('/') {
            bail!("{to}: no such directory here");
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            bail!("{}: no such directory here", parent.display());
        }
        let staging = staging_dir(&parent)?;
        Landing::Rename { staging, dest }
    };
    let target = match &landing {
        Landing::Into(d) | Landing::Rename { staging: d, .. } => d.clone(),
    };
    // Contents merge only into a directory that exists.
    let contents = contents && matches!(landing, Landing::Into(_));
    let req = Request::VmCpOut {
        name: vm.to_string(),
        src: src.to_string(),
        contents,
    };
    // The guest's tar may hold only what was asked for.
    let top = (!contents).then_some(name.as_str());
    let result = receive(socket, &req, &target, top, &format!("from {vm}:{path}"))
        .and_then(|got| settle(&landing, &name).map(|placed| (placed, got)));
    if let Landing::Rename { staging, .. } = &landing {
        let _ = std::fs::remove_dir_all(staging);
    }
    let (placed, (bytes, unpacked)) = result?;
    let skipped = match unpacked.skipped {
        0 => String::new(),
        n => format!("; skipped {n} device nodes, FIFOs or unknown entries"),
    };
    Ok(format!(
        "copied {vm}:{path} to {} ({bytes} bytes of tar{skipped})",
        placed.display()
    ))
}

/// A new 0700 directory in `parent` for a copy to land in before it is
/// renamed into place; its name is this copy's alone (`banger mcp` runs
/// several copies at once in one process).
fn staging_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let staging = parent.join(format!(".banger-cp.{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&staging) {
            Ok(()) => return Ok(staging),
            // Left by an earlier process that had this pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", staging.display())),
        }
    }
}

/// Renames a staged copy into place; returns where the copy is.
fn settle(landing: &Landing, name: &str) -> anyhow::Result<PathBuf> {
    match landing {
        Landing::Into(dir) => Ok(dir.join(name)),
        Landing::Rename { staging, dest } => {
            let entry = staging.join(name);
            let is_dir = std::fs::symlink_metadata(&entry)
                .with_context(|| format!("the copy held no {name}"))?
                .is_dir();
            if is_dir && dest.symlink_metadata().is_ok() {
                bail!(
                    "{}: exists and is not a directory; cannot copy a directory over it",
                    dest.display()
                );
            }
            std::fs::rename(&entry, dest).with_context(|| format!("writing {}", dest.display()))?;
            Ok(dest.clone())
        }
    }
}

/// Streams the daemon's tar into an extraction into `dir` (its own
/// thread, fed through a bounded channel; see [`untar`] for what a guest's
/// tar may hold, `top` the one entry asked for); returns the tar's size.
fn receive(
    socket: &Path,
    req: &Request,
    dir: &Path,
    top: Option<&str>,
    what: &str,
) -> anyhow::Result<(u64, untar::Unpacked)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let dir = dir.to_path_buf();
    let top = top.map(str::to_string);
    let unpack = std::thread::spawn(move || {
        let from = ChannelReader {
            rx,
            buf: Vec::new(),
            at: 0,
        };
        untar::unpack(from, &dir, top.as_deref())
    });
    let mut line = ProgressLine::new();
    let mut bytes = 0u64;
    let mut shown = 0u64;
    let answer: Result<serde_json::Value, banger_api::ApiError> = client::call_streaming(
        socket,
        req,
        |_| {},
        |chunk| {
            bytes += chunk.len() as u64;
            if bytes - shown >= 1 << 20 {
                shown = bytes;
                line.update(&progress(bytes, what));
            }
            tx.send(chunk.to_vec()).map_err(|_| {
                banger_api::ApiError::internal("writing the copy here stopped; see the next error")
            })
        },
    );
    line.finish();
    drop(tx);
    let unpacked = unpack
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the extraction thread panicked")));
    match (answer, unpacked) {
        (Err(e), Err(local)) if e.message.contains("see the next error") => {
            Err(anyhow::anyhow!("writing the copy here: {local}"))
        }
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(local)) => Err(anyhow::anyhow!("writing the copy here: {local}")),
        (Ok(_), Ok(unpacked)) => Ok((bytes, unpacked)),
    }
}

fn progress(bytes: u64, what: &str) -> Progress {
    Progress {
        phase: "copy".into(),
        message: format!("{} MiB {what}", bytes >> 20),
        percent: 0,
    }
}

/// Reads the chunks a channel carries, in order, until it closes.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => (self.buf, self.at) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A writer that shows how much went through it on the progress line.
struct Counted<'a, W: Write> {
    out: W,
    line: &'a mut ProgressLine,
    what: String,
    bytes: u64,
    shown: u64,
}

impl<'a, W: Write> Counted<'a, W> {
    fn new(out: W, line: &'a mut ProgressLine, what: String) -> Self {
        Counted {
            out,
            line,
            what,
            bytes: 0,
            shown: 0,
        }
    }
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(data)?;
        self.bytes += n as u64;
        if self.bytes - self.shown >= 1 << 20 {
            self.shown = self.bytes;
            self.line.update(&progress(self.bytes, &self.what));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_vm_path_or_host_paths() {
        assert_eq!(
            Side::parse("dev:/root/x"),
            Side::Vm {
                vm: "dev".into(),
                path: "/root/x".into()
            }
        );
        assert_eq!(Side::parse("./dev:x"), Side::Host("./dev:x".into()));
        assert_eq!(Side::parse("/tmp/a"), Side::Host("/tmp/a".into()));
        assert_eq!(Side::parse("Bad_Name:x"), Side::Host("Bad_Name:x".into()));
    }

    #[test]
    fn a_trailing_dot_means_the_contents() {
        assert_eq!(contents_of("/root/d/."), (true, "/root/d"));
        assert_eq!(contents_of("d"), (false, "d"));
        assert_eq!(contents_of("."), (true, "."));
    }

    #[test]
    fn an_extraction_keeps_modes_and_links_and_drops_set_id_bits() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("tree");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o4751))
            .unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("link")).unwrap();
        let mut tar_bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar_bytes);
            b.follow_symlinks(false);
            b.append_dir_all("tree", &src).unwrap();
            b.finish().unwrap();
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let feeder = std::thread::spawn(move || {
            for c in tar_bytes.chunks(100) {
                tx.send(c.to_vec()).unwrap();
            }
        });
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let from = ChannelReader {
            rx,
            buf: Vec::new(),
            at: 0,
        };
        // As `receive` does; the padding after the archive is read too.
        untar::unpack(from, &out, Some("tree")).unwrap();
        feeder.join().unwrap();
        let mode = std::fs::metadata(out.join("tree/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o7777,
            0o751 & !untar::current_umask(),
            "rwx kept less the umask, set-uid dropped"
        );
        assert_eq!(
            std::fs::read_link(out.join("tree/link")).unwrap(),
            Path::new("run.sh")
        );
    }
}
