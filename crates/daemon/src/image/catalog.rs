//! The image catalog: what is built under the image directory, and how a
//! version comes and goes.
//!
//! An image is a directory of versions, each immutable while it exists:
//!
//! ```text
//! IMAGE_DIR/NAME/1/{vmlinuz,initrd.img,rootfs.ext4,manifest.json}
//! IMAGE_DIR/NAME/2/...
//! IMAGE_DIR/NAME/current -> 2
//! ```
//!
//! A version is built in a hidden staging directory, renamed into place
//! once complete (its manifest written last), and only then does the
//! `current` link move to it (a new link renamed over the old one), so a
//! half-built version is never current and a failed build leaves the
//! previous version as it was. New VMs take the current version; a VM keeps
//! the version it was made from until it is deleted. An image built before
//! versions (files directly in `IMAGE_DIR/NAME/`, no `current`) is version
//! [`LEGACY_IMAGE_VERSION`].

use std::collections::HashSet;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::pathio::FromPathIo;
use banger_api::ImageInfo;

use super::{ImageError, Manifest};
use crate::layout::{ensure_dir, parse_image_version, ImagePaths, Layout, LEGACY_IMAGE_VERSION};

/// Every complete version of every image, by name, newest version first.
/// `used_by` is left empty: the store knows the VMs.
pub fn list(layout: &Layout) -> Result<Vec<ImageInfo>, ImageError> {
    let mut out = Vec::new();
    for name in names(layout) {
        let current = current(layout, &name);
        for version in versions(layout, &name).into_iter().rev() {
            out.extend(info(layout, &name, version, current));
        }
    }
    Ok(out)
}

/// The names of the images under the image directory (hidden entries are
/// builds or removals in progress).
pub fn names(layout: &Layout) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&layout.image_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The version new VMs of image `name` get: the one `current` names (if
/// complete), or, without a `current` link, an image built before versions.
pub fn current(layout: &Layout, name: &str) -> Option<u32> {
    let complete = |v: u32| layout.image_version(name, v).exists().then_some(v);
    match std::fs::read_link(layout.image_current(name)) {
        Ok(target) => target
            .to_str()
            .and_then(parse_image_version)
            .and_then(complete),
        Err(_) => complete(LEGACY_IMAGE_VERSION),
    }
}

/// Every version of image `name` present, complete or not, oldest first:
/// the version directories, and [`LEGACY_IMAGE_VERSION`] while any file of
/// an image built before versions is left.
pub fn versions(layout: &Layout, name: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(layout.image_root(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| parse_image_version(&e.file_name().to_string_lossy()))
        .collect();
    let legacy = layout.image_version(name, LEGACY_IMAGE_VERSION);
    if legacy.files().iter().any(|f| f.exists()) {
        out.push(LEGACY_IMAGE_VERSION);
    }
    out.sort_unstable();
    out
}

/// One version's description, if it is complete.
pub fn info(layout: &Layout, name: &str, version: u32, current: Option<u32>) -> Option<ImageInfo> {
    let paths = layout.image_version(name, version);
    let text = std::fs::read_to_string(paths.manifest()).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    paths.rootfs().metadata().ok()?;
    let rootfs_bytes = crate::disk::probe::virtual_size(&paths.rootfs());
    Some(ImageInfo {
        name: name.to_string(),
        path: paths.dir.display().to_string(),
        rootfs_bytes,
        kernel: m.kernel,
        built_at: m.built_at,
        version,
        current: current == Some(version),
        used_by: Vec::new(),
        templates: Vec::new(),
        suite: m.suite,
        includes: m.includes,
        script_sha256: m.script_sha256,
        from_vm: m.from_vm,
    })
}

/// Makes a new version of image `name`: `populate` writes its files (the
/// manifest last) into a staging directory, which becomes the version
/// directory once complete; then `current` moves to it. Returns the new
/// version. If `populate` fails, or leaves no manifest, nothing but the
/// staging directory was touched, and that is removed.
///
/// The caller holds the image build lock: one install at a time.
pub fn install(
    layout: &Layout,
    name: &str,
    populate: impl FnOnce(&ImagePaths) -> Result<(), ImageError>,
) -> Result<u32, ImageError> {
    let root = layout.image_root(name);
    ensure_dir(&root, 0o755).map_err(|e| ImageError::io(&root, e))?;
    sweep(layout, name);
    let version = versions(layout, name).last().map_or(1, |v| v + 1);
    let staging = ImagePaths::new(layout.image_staging(name, version));
    std::fs::create_dir(&staging.dir)
        // Readable by every VMM's uid, whatever the daemon's umask.
        .and_then(|()| std::fs::set_permissions(&staging.dir, Permissions::from_mode(0o755)))
        .map_err(|e| ImageError::io(&staging.dir, e))?;
    let made = populate(&staging).and_then(|()| {
        if !staging.exists() {
            return Err(ImageError::Invalid(
                "the image build left no manifest".into(),
            ));
        }
        for f in staging.files().iter().chain([&staging.dir]) {
            sync(f)?;
        }
        if staging.vmlinux().exists() {
            sync(&staging.vmlinux())?;
        }
        Ok(())
    });
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&staging.dir);
        return Err(e);
    }
    let dest = layout.image_version(name, version);
    std::fs::rename(&staging.dir, &dest.dir).map_err(|e| ImageError::io(&dest.dir, e))?;
    let next = layout.image_current_next(name);
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(version.to_string(), &next).map_err(|e| ImageError::io(&next, e))?;
    sync(&root)?;
    let link = layout.image_current(name);
    std::fs::rename(&next, &link).map_err(|e| ImageError::io(&link, e))?;
    sync(&root)?;
    Ok(version)
}

/// Removes the versions of image `name` that are older than the current
/// one and not in `in_use`; with `after_crash` (no install can be running),
/// also those newer than current (a build that ended between its rename
/// and the move of `current`) and leftover staging directories. Without a
/// current version, nothing. Returns the versions removed.
pub fn prune(
    layout: &Layout,
    name: &str,
    in_use: &HashSet<u32>,
    after_crash: bool,
) -> Result<Vec<u32>, ImageError> {
    if after_crash {
        sweep(layout, name);
    }
    let Some(current) = current(layout, name) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for v in versions(layout, name) {
        let superseded = v < current || (after_crash && v > current);
        if superseded && !in_use.contains(&v) {
            remove_version(layout, name, v)?;
            removed.push(v);
        }
    }
    Ok(removed)
}

/// Removes one version: renamed away first, so what is left of it is never
/// taken for a version. An image built before versions loses its files,
/// the manifest first.
pub fn remove_version(layout: &Layout, name: &str, version: u32) -> Result<(), ImageError> {
    let paths = layout.image_version(name, version);
    if version == LEGACY_IMAGE_VERSION {
        for f in paths.files() {
            remove_file(&f)?;
        }
        return Ok(());
    }
    let trash = layout.image_trash(name, version);
    match std::fs::rename(&paths.dir, &trash) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(&paths.dir, e)),
        Ok(()) => {}
    }
    remove_dir(&trash)
}

/// Removes image `name`, every version: `current` first, then the whole
/// directory, renamed away before it is deleted.
pub fn remove(layout: &Layout, name: &str) -> Result<(), ImageError> {
    remove_file(&layout.image_current(name))?;
    let (root, trash) = (layout.image_root(name), layout.image_root_trash(name));
    match std::fs::rename(&root, &trash) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(&root, e)),
        Ok(()) => remove_dir(&trash),
    }
}

/// Removes what an interrupted build or removal of image `name` left: its
/// staging and trash directories, a half-made `current` link, and the
/// image's own trash beside it. Only while no install runs.
pub fn sweep(layout: &Layout, name: &str) {
    let _ = remove_dir(&layout.image_root_trash(name));
    let _ = remove_file(&layout.image_current_next(name));
    let root = layout.image_root(name);
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let left =
            file.starts_with('.') && (file.ends_with(".building") || file.ends_with(".removing"));
        if left && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = remove_dir(&e.path());
        }
    }
}

fn remove_dir(dir: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io(dir, e)),
        _ => Ok(()),
    }
}

fn remove_file(file: &Path) -> Result<(), ImageError> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io(file, e)),
        _ => Ok(()),
    }
}

/// Flushes a file or a directory (its entries) to disk, so a version is
/// complete on disk before a rename makes it visible.
fn sync(path: &Path) -> Result<(), ImageError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(path, e))
}

/// What a build writes, with `tag` as the content of every file and as
/// the kernel version: a stand-in for `build::build` in tests.
#[cfg(test)]
pub(crate) fn fake_build(tag: &str) -> impl FnOnce(&ImagePaths) -> Result<(), ImageError> + Send {
    let tag = tag.to_string();
    move |out| {
        for f in [out.kernel(), out.initrd(), out.rootfs()] {
            std::fs::write(&f, &tag).map_err(|e| ImageError::io(&f, e))?;
        }
        let m = Manifest {
            name: "fake".into(),
            kernel: tag.clone(),
            suite: "bookworm".into(),
            built_at: 1_700_000_000,
            guest_agent: true,
            restore_protocol: crate::guest::restore::PROTOCOL,
            // The fake VMM writes no console.
            announces_sshd: false,
            includes: Vec::new(),
            script_sha256: None,
            from_vm: None,
        };
        let json = serde_json::to_string(&m).unwrap_or_default();
        std::fs::write(out.manifest(), json).map_err(|e| ImageError::io(&out.manifest(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(tag: &str) -> impl FnOnce(&ImagePaths) -> Result<(), ImageError> + Send {
        fake_build(tag)
    }

    fn layout(dir: &Path) -> Layout {
        Layout::new(dir.join("state"), dir.join("run"), None)
    }

    fn rootfs(l: &Layout, v: u32) -> String {
        std::fs::read_to_string(l.image_version("img", v).rootfs()).unwrap_or_default()
    }

    #[test]
    fn each_build_is_a_new_version_and_current_moves_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        assert_eq!(current(&l, "img"), None);
        assert_eq!(install(&l, "img", fake("one")).unwrap(), 1);
        assert_eq!(install(&l, "img", fake("two")).unwrap(), 2);
        assert_eq!(current(&l, "img"), Some(2));
        assert_eq!((rootfs(&l, 1), rootfs(&l, 2)), ("one".into(), "two".into()));
        assert_eq!(
            std::fs::read_link(l.image_current("img")).unwrap(),
            Path::new("2")
        );
        // A build that fails, or ends without its manifest, changes nothing.
        let failed = install(&l, "img", |out| {
            std::fs::write(out.rootfs(), "half").unwrap();
            Err(ImageError::Invalid("mmdebstrap failed".into()))
        });
        assert!(failed.is_err());
        let no_manifest = install(&l, "img", |out| {
            std::fs::write(out.rootfs(), "half").unwrap();
            Ok(())
        });
        assert!(no_manifest.unwrap_err().to_string().contains("no manifest"));
        assert_eq!(current(&l, "img"), Some(2));
        assert_eq!(versions(&l, "img"), [1, 2]);
        assert_eq!(rootfs(&l, 2), "two");
        let left: Vec<_> = std::fs::read_dir(l.image_root("img"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let listed: Vec<(u32, bool)> = list(&l)
            .unwrap()
            .iter()
            .map(|i| (i.version, i.current))
            .collect();
        assert_eq!(listed, [(2, true), (1, false)]);
    }

    #[test]
    fn a_build_the_daemon_died_in_is_never_current_and_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        install(&l, "img", fake("one")).unwrap();
        // Died while building version 2: its staging directory is left.
        let staging = l.image_staging("img", 2);
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("rootfs.ext4"), "half").unwrap();
        // Died after renaming version 3 into place, before moving `current`.
        let done = l.image_version("img", 3);
        std::fs::create_dir(&done.dir).unwrap();
        fake("three")(&done).unwrap();
        assert_eq!(current(&l, "img"), Some(1));
        // A prune while an install may run leaves both alone.
        assert!(prune(&l, "img", &HashSet::new(), false).unwrap().is_empty());
        assert!(staging.exists() && done.exists());
        // At daemon start, both go; the current version stays.
        assert_eq!(prune(&l, "img", &HashSet::new(), true).unwrap(), [3]);
        assert!(!staging.exists() && !done.dir.exists());
        assert_eq!(
            (current(&l, "img"), versions(&l, "img")),
            (Some(1), vec![1])
        );
        // The next build takes the next number.
        assert_eq!(install(&l, "img", fake("four")).unwrap(), 2);
    }

    #[test]
    fn superseded_versions_go_only_when_no_vm_uses_them() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        for tag in ["one", "two", "three"] {
            install(&l, "img", fake(tag)).unwrap();
        }
        let in_use: HashSet<u32> = [1].into();
        assert_eq!(prune(&l, "img", &in_use, false).unwrap(), [2]);
        assert_eq!(versions(&l, "img"), [1, 3]);
        assert_eq!(prune(&l, "img", &HashSet::new(), false).unwrap(), [1]);
        assert_eq!(versions(&l, "img"), [3]);
        // The current version stays, used or not.
        assert!(prune(&l, "img", &HashSet::new(), true).unwrap().is_empty());
        remove(&l, "img").unwrap();
        assert!(!l.image_root("img").exists());
        assert!(names(&l).is_empty());
    }

    /// An image directory as banger wrote it before versions.
    fn legacy(l: &Layout, tag: &str) {
        let paths = l.image_version("img", LEGACY_IMAGE_VERSION);
        std::fs::create_dir_all(&paths.dir).unwrap();
        fake(tag)(&paths).unwrap();
    }

    #[test]
    fn an_image_built_before_versions_is_version_0_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        legacy(&l, "old");
        let root = l.image_root("img");
        assert_eq!(
            l.image_version("img", LEGACY_IMAGE_VERSION).rootfs(),
            root.join("rootfs.ext4"),
            "the path the old VMs' disks point at"
        );
        assert_eq!(current(&l, "img"), Some(0));
        let listed = list(&l).unwrap();
        assert_eq!(
            (listed.len(), listed[0].version, listed[0].current),
            (1, 0, true)
        );
        assert_eq!(install(&l, "img", fake("new")).unwrap(), 1);
        assert_eq!(current(&l, "img"), Some(1));
        assert_eq!(rootfs(&l, LEGACY_IMAGE_VERSION), "old");
        assert_eq!(versions(&l, "img"), [0, 1]);
        // Still used: kept. Then unused: its files go, the versions stay.
        assert!(prune(&l, "img", &[0].into(), false).unwrap().is_empty());
        assert_eq!(prune(&l, "img", &HashSet::new(), false).unwrap(), [0]);
        assert!(!root.join("rootfs.ext4").exists() && !root.join("manifest.json").exists());
        assert_eq!(versions(&l, "img"), [1]);
        assert_eq!(rootfs(&l, 1), "new");
    }
}
