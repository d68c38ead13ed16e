//! Templates: a VM of one shape (image version, vCPUs, memory, disk size)
//! booted once until sshd answers, paused, and saved: its device and
//! memory state in `state`, its disk frozen as `disk.qcow2`. A new VM of
//! that shape is restored from the state, over a copy-on-write disk made
//! on the template's disk, and then takes its own identity.
//!
//! Each build gets a directory of its own (`TEMPLATES/ID/`), because the
//! disks of the VMs restored from it name its disk as their backing file:
//! a template is never changed or replaced in place, only removed once no
//! VM is made over it and a newer one (or none) serves its shape.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::Strategy;
use crate::layout::Layout;

/// The template's disk, made over the image's root filesystem by the
/// shape's disk strategy (a qcow2 overlay, or a reflinked or sparse copy);
/// restored VMs' disks are made over it the same way.
pub fn disk_file(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Qcow2 => "disk.qcow2",
        _ => "disk.img",
    }
}

/// Strategies a template's disk can be made with: a disk that is a whole
/// disk (not a device-mapper snapshot's changes alone).
pub fn strategy_allowed(strategy: Strategy) -> bool {
    strategy != Strategy::DmSnapshot
}
/// The saved device and memory state: a directory the backend fills
/// (`Vmm::snapshot`).
pub const STATE: &str = "state";
const META: &str = "meta.json";
/// The template's boot on its serial console.
pub const CONSOLE: &str = "console.log";
/// Marks a template whose restore failed: never used again.
pub const BROKEN: &str = "broken";
const BUILDING: &str = ".building-";

/// Bumped when the way a template is made, or the way a restored VM takes
/// its identity, changes: templates of another format are rebuilt. (3: the
/// kernel QEMU boots, and its command line; a saved state restores only
/// into the same.)
pub const FORMAT: u32 = 3;

/// What a template is of: VMs of this shape can be restored from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub image: String,
    pub image_version: u32,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    /// The disk strategy (`Strategy::as_str`) of the template's disk and of
    /// the VMs restored from it.
    #[serde(default = "qcow2")]
    pub disk: String,
}

fn qcow2() -> String {
    Strategy::Qcow2.as_str().to_string()
}

impl Shape {
    /// A readable, file-name-safe prefix for the template's directory.
    pub fn key(&self) -> String {
        format!(
            "{}-v{}-{}c-{}m-{}g-{}",
            self.image, self.image_version, self.cpus, self.memory_mib, self.disk_gib, self.disk
        )
    }

    /// The disk strategy, parsed.
    pub fn strategy(&self) -> Strategy {
        Strategy::parse(&self.disk).unwrap_or(Strategy::Qcow2)
    }
}

/// What a template was made by; a template is usable only while all of it
/// matches the running daemon and VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maker {
    pub format: u32,
    pub banger: String,
    pub vmm: String,
    /// The VMM's version and accelerator: a saved state loads only into
    /// the same machine.
    pub vmm_version: String,
}

impl Maker {
    pub fn current(vmm: &str, vmm_version: &str) -> Self {
        Maker {
            format: FORMAT,
            banger: env!("CARGO_PKG_VERSION").to_string(),
            vmm: vmm.to_string(),
            vmm_version: vmm_version.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub shape: Shape,
    pub maker: Maker,
    /// Which build of the image version it was made over ([`image_stamp`]):
    /// `image rm` and a rebuild give a new image the old version number,
    /// and the template's disk names the image's files by path.
    #[serde(default)]
    pub image_stamp: String,
    /// Seconds since the Unix epoch.
    pub built_at: i64,
    /// How long the build took, boot to saved state.
    pub build_seconds: f64,
}

/// One template on disk.
#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Template {
    pub fn disk(&self) -> PathBuf {
        self.dir.join(disk_file(self.meta.shape.strategy()))
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
}

/// Every complete template (those being built are not listed).
pub fn list(layout: &Layout) -> Vec<Template> {
    let Ok(entries) = std::fs::read_dir(layout.templates_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<Template> = entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            if id.starts_with('.') {
                return None;
            }
            let dir = e.path();
            let meta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
            let t = Template { id, dir, meta };
            (t.disk().is_file() && t.state().is_dir()).then_some(t)
        })
        .collect();
    out.sort_by(|a, b| (a.meta.built_at, &a.id).cmp(&(b.meta.built_at, &b.id)));
    out
}

/// The newest usable template of `shape`, made by `maker` over the image
/// version that is there now.
pub fn find(layout: &Layout, shape: &Shape, maker: &Maker) -> Option<Template> {
    let stamp = image_stamp(layout, shape)?;
    list(layout).into_iter().rev().find(|t| {
        &t.meta.shape == shape
            && &t.meta.maker == maker
            && t.meta.image_stamp == stamp
            && !t.dir.join(BROKEN).exists()
    })
}

/// What tells one build of `shape`'s image version from another that got
/// the same number (after `image rm`): the manifest's build time and the
/// root filesystem's inode and modification time. `None` when the
/// version is not there.
pub fn image_stamp(layout: &Layout, shape: &Shape) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let image = layout.image_version(&shape.image, shape.image_version);
    let built_at = crate::image::Manifest::read(&image)?.built_at;
    let rootfs = std::fs::metadata(image.rootfs()).ok()?;
    Some(format!(
        "{built_at}-{}-{}.{:09}",
        rootfs.ino(),
        rootfs.mtime(),
        rootfs.mtime_nsec()
    ))
}

/// A new template's id (its directory name).
pub fn new_id(shape: &Shape) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", shape.key())
}

/// Where template `id` is assembled before it appears under its id.
pub fn building_dir(layout: &Layout, id: &str) -> PathBuf {
    layout.templates_dir().join(format!("{BUILDING}{id}"))
}

/// Writes the metadata into a template being built.
pub fn write_meta(dir: &Path, meta: &Meta) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(META), body)
}

/// At most this many templates no VM is made over are kept (the newest):
/// each holds a guest's memory on disk, and any user who may create VMs
/// can ask for one of a new shape.
pub const MAX_IDLE: usize = 8;

/// Templates nobody needs: not made over by any VM (`in_use`), and either
/// unusable (`usable` says no), older than another of the same shape, or
/// beyond the newest [`MAX_IDLE`] of those left.
pub fn unneeded(
    all: &[Template],
    in_use: &[String],
    usable: impl Fn(&Template) -> bool,
) -> Vec<Template> {
    let (mut gone, mut idle) = (Vec::new(), Vec::new());
    for (i, t) in all.iter().enumerate() {
        if in_use.contains(&t.id) {
            continue;
        }
        let newer_usable = all[i + 1..]
            .iter()
            .any(|n| n.meta.shape == t.meta.shape && usable(n));
        match !usable(t) || newer_usable {
            true => gone.push(t.clone()),
            false => idle.push(t.clone()),
        }
    }
    // `all` is oldest first.
    let beyond = idle.len().saturating_sub(MAX_IDLE);
    gone.extend(idle.into_iter().take(beyond));
    gone
}

/// Half-built templates (a build the daemon did not finish).
pub fn unfinished(layout: &Layout) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(layout.templates_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(BUILDING))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cpus: u32) -> Shape {
        Shape {
            image: "default".into(),
            image_version: 1,
            cpus,
            memory_mib: 1024,
            disk_gib: 4,
            disk: "qcow2".into(),
        }
    }

    fn template(id: &str, cpus: u32, built_at: i64, banger: &str) -> Template {
        let mut maker = Maker::current("qemu", "7.2 tcg");
        maker.banger = banger.into();
        Template {
            id: id.into(),
            dir: PathBuf::from(id),
            meta: Meta {
                shape: shape(cpus),
                maker,
                image_stamp: String::new(),
                built_at,
                build_seconds: 1.0,
            },
        }
    }

    #[test]
    fn find_takes_the_newest_of_the_shape_by_the_same_maker() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path().into(), dir.path().join("run"), None);
        crate::image::catalog::install(&l, "default", crate::image::catalog::fake_build("v1"))
            .unwrap();
        let stamp = image_stamp(&l, &shape(1)).unwrap();
        let maker = Maker::current("qemu", "7.2 tcg");
        for (id, cpus, at, vmm_version) in [
            ("a", 1, 10, "7.2 tcg"),
            ("b", 1, 20, "7.2 tcg"),
            ("c", 2, 30, "7.2 tcg"),
            ("d", 1, 40, "8.0 tcg"),
        ] {
            let d = l.template_dir(id);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("disk.qcow2"), "").unwrap();
            std::fs::create_dir(d.join(STATE)).unwrap();
            let meta = Meta {
                shape: shape(cpus),
                maker: Maker::current("qemu", vmm_version),
                image_stamp: stamp.clone(),
                built_at: at,
                build_seconds: 1.0,
            };
            write_meta(&d, &meta).unwrap();
        }
        // Half-built: never listed.
        std::fs::create_dir_all(building_dir(&l, "e")).unwrap();
        assert_eq!(find(&l, &shape(1), &maker).unwrap().id, "b");
        assert_eq!(find(&l, &shape(2), &maker).unwrap().id, "c");
        assert!(find(&l, &shape(4), &maker).is_none());
        assert_eq!(list(&l).len(), 4);
        assert_eq!(unfinished(&l).len(), 1);
    }

    #[test]
    fn a_template_in_use_is_never_unneeded() {
        let usable = |t: &Template| t.meta.maker.banger == "new";
        let all = vec![
            template("old-unused", 1, 1, "old"),
            template("old-used", 1, 2, "old"),
            template("superseded", 1, 3, "new"),
            template("current", 1, 4, "new"),
            template("other-shape", 2, 5, "new"),
        ];
        let gone: Vec<String> = unneeded(&all, &["old-used".into()], usable)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(gone, ["old-unused", "superseded"]);
        let gone = unneeded(&all, &["superseded".into()], usable);
        assert!(gone
            .iter()
            .all(|t| t.id != "superseded" && t.id != "current"));
    }

    #[test]
    fn only_the_newest_idle_templates_are_kept() {
        let usable = |_: &Template| true;
        let all: Vec<Template> = (0..MAX_IDLE as u32 + 3)
            .map(|i| template(&format!("t{i}"), i + 1, i64::from(i), "new"))
            .collect();
        // t1 is in use: it is kept and does not count.
        let gone: Vec<String> = unneeded(&all, &["t1".into()], usable)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(gone, ["t0", "t2"]);
    }
}
