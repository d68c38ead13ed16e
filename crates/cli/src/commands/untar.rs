//! Extracting a tar that a guest made (`vm cp VM:PATH HOST`), as the user,
//! trusting nothing in it: every entry must be the one asked for or under
//! it (no absolute path, no `..`, nothing through a symlink: the `tar`
//! crate's own checks), a hard link may point only at a file this same
//! copy brought, device nodes and FIFOs are skipped, modes lose their
//! set-id bits and follow the user's umask, ownership is the user's. Memory
//! stays bounded whatever the guest sends: a header (with its long names
//! and pax records) over [`HEADER_LIMIT`] is refused, and so is more than
//! [`TRAILER_LIMIT`] after the end of the archive.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

/// The most bytes read for one entry's headers (its long name, long link
/// name, pax records, sparse map, and the padding before it).
pub const HEADER_LIMIT: u64 = 4 << 20;

/// The most bytes taken after the end of the archive (GNU tar pads to a
/// 10 KiB record).
pub const TRAILER_LIMIT: u64 = 1 << 20;

/// What an extraction did besides writing files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Device nodes, FIFOs and entries of unknown kinds, not written.
    pub skipped: u64,
}

/// Extracts the tar `from` into the existing directory `dir`. With `top`,
/// every entry must be `top` or under it (a copy of one named file or
/// directory); without, any entry inside `dir` (a directory's contents).
pub fn unpack(from: impl Read, dir: &Path, top: Option<&str>) -> io::Result<Unpacked> {
    let umask = current_umask();
    let root = dir.canonicalize()?;
    let budget = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(Budgeted {
        inner: from,
        left: budget.clone(),
    });
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    archive.set_mask(umask);
    let mut run = Run {
        root,
        top,
        umask,
        files: HashSet::new(),
        closed_dirs: Vec::new(),
        done: Unpacked::default(),
    };
    let mut entries = archive.entries()?;
    loop {
        budget.set(Some(HEADER_LIMIT));
        let next = entries.next();
        budget.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry?;
        run.entry(&mut entry)?;
        // What the entry did not use (a link's stray data, a skipped one's).
        io::copy(&mut entry, &mut io::sink())?;
    }
    run.close_dirs()?;
    // The rest is padding; a guest that goes on sending is cut off.
    budget.set(Some(TRAILER_LIMIT));
    let mut rest = archive.into_inner();
    match io::copy(&mut rest, &mut io::sink()) {
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => Err(io::Error::other(format!(
            "the guest sent more than {} MiB after the end of its tar; stopped reading",
            TRAILER_LIMIT >> 20
        ))),
        other => other.map(|_| run.done),
    }
}

/// One extraction's state.
struct Run<'a> {
    /// `dir`, canonical.
    root: PathBuf,
    top: Option<&'a str>,
    umask: u32,
    /// Regular files this copy wrote (relative): what a hard link may name.
    files: HashSet<PathBuf>,
    /// Directories made writable while filled, with the mode they get last.
    closed_dirs: Vec<(PathBuf, u32)>,
    done: Unpacked,
}

impl Run<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let rel = self.allowed(&entry.path()?)?;
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                entry.unpack_in(&self.root)?;
                self.files.insert(rel);
            }
            EntryType::Directory => {
                self.files.remove(&rel);
                self.directory(entry, rel)?;
            }
            EntryType::Symlink => {
                entry.unpack_in(&self.root)?;
                // No longer a file this copy wrote.
                self.files.remove(&rel);
            }
            EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| bad(&rel, "is a hard link without a target"))?;
                let target = normal(&target).filter(|t| self.files.contains(t));
                if target.is_none() {
                    return Err(bad(
                        &rel,
                        "is a hard link to a file this copy did not bring; refused",
                    ));
                }
                entry.unpack_in(&self.root)?;
                self.files.insert(rel);
            }
            EntryType::GNUSparse => return Err(bad(&rel, "is a sparse entry; not taken")),
            _ => self.done.skipped += 1,
        }
        Ok(())
    }

    /// A directory, made (or kept) writable by its owner until the end so
    /// that its entries can be written; its own mode is set last.
    fn directory<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: PathBuf,
    ) -> io::Result<()> {
        if rel.as_os_str().is_empty() {
            return Ok(()); // the destination itself: left as it is
        }
        let mode = entry.header().mode()? & 0o777 & !self.umask;
        entry.unpack_in(&self.root)?;
        if mode & 0o700 != 0o700 {
            let path = self.root.join(&rel);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o700))?;
            self.closed_dirs.push((path, mode));
        }
        Ok(())
    }

    /// Sets the modes held back, deepest first.
    fn close_dirs(&mut self) -> io::Result<()> {
        self.closed_dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode) in &self.closed_dirs {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
        }
        Ok(())
    }

    /// `path` made relative and checked against what was asked for.
    fn allowed(&self, path: &Path) -> io::Result<PathBuf> {
        let rel = normal(path).ok_or_else(|| {
            bad(
                path,
                "climbs out of the destination (absolute, or with ..); refused",
            )
        })?;
        if let Some(top) = self.top {
            if rel.components().next() != Some(Component::Normal(top.as_ref())) {
                return Err(bad(
                    path,
                    &format!("is not {top} or inside it; the guest's tar holds more than was asked for, refused"),
                ));
            }
        }
        Ok(rel)
    }
}

/// `path` without `./` parts; `None` when absolute or with `..`.
fn normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn bad(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the guest's tar entry {} {why}", path.display()),
    )
}

/// This process's umask, from `/proc/self/status` (reading it with
/// `umask(2)` would change it for a moment under other threads); 022 when
/// unknown.
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// A reader that fails once a budget (when set) is spent: what one tar
/// header, or the trailer, may take.
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(out);
        };
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "a tar header from the guest runs past {} MiB; refused",
                    HEADER_LIMIT >> 20
                ),
            ));
        }
        let room = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..room])?;
        self.left.set(Some(left - n as u64));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn paths_are_made_relative_or_refused() {
        assert_eq!(normal(Path::new("./a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(normal(Path::new("./")), Some(PathBuf::new()));
        assert_eq!(normal(Path::new("/etc/passwd")), None);
        assert_eq!(normal(Path::new("a/../../b")), None);
    }

    #[test]
    fn contents_take_any_name_and_a_named_copy_only_its_own() {
        let t = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            ("./", EntryType::Directory, b""),
            ("./x", EntryType::Regular, b"1"),
            ("./y", EntryType::Regular, b"2"),
        ]);
        unpack(&tar[..], t.path(), None).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("y")).unwrap(), "2");
        let named = tar_of(&[
            ("x", EntryType::Regular, b"1"),
            ("y", EntryType::Regular, b"2"),
        ]);
        let e = unpack(&named[..], t.path(), Some("x")).unwrap_err();
        assert!(e.to_string().contains("entry y is not x"), "{e}");
    }

    #[test]
    fn a_spent_budget_is_an_error_and_none_is_no_limit() {
        let left = Rc::new(Cell::new(Some(3)));
        let mut r = Budgeted {
            inner: io::repeat(1),
            left: left.clone(),
        };
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(
            r.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
        left.set(None);
        assert_eq!(r.read(&mut buf).unwrap(), 8);
    }
}
