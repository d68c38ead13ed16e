//! dm-snapshot root disks, as the original tool makes them: a persistent
//! device-mapper snapshot over a read-only loop device of the image, whose
//! changes go to a per-VM COW file (`root.cow`). The devices exist only
//! while the VM runs: [`CowDisk::activate`] sets them up before each boot
//! (also the first after a host reboot: a persistent snapshot reloads its
//! changes from the COW file), [`CowDisk::deactivate`] removes them after
//! stop and kill; the COW file stays until delete.
//!
//! Per VM `NAME` (taken from the disk's directory, `.../vms/NAME/root.cow`):
//!
//! ```text
//! /dev/loopA  read-only, over the image's rootfs.ext4
//! /dev/loopB  over root.cow
//! banger-vm-NAME-origin  linear loopA (+ zero up to the disk size)
//! banger-vm-NAME         snapshot banger-vm-NAME-origin loopB P 8
//! ```
//!
//! Both loops are detached right after the devices are made ("lazy": the
//! kernel frees them when device-mapper closes them), so removing the two
//! devices is the whole teardown. Every command is built by a function of
//! this module and run through [`Exec`], so the sequence and its undo are
//! unit-tested without device-mapper (this project's test kernel has none).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{CowDisk, DiskError, Strategy};
use crate::cmd::{self, CmdError};
use crate::pathio::FromPathIo;
use crate::vmm::DiskFormat;

/// Device-mapper names of banger's devices start with this.
pub const DM_PREFIX: &str = "banger-vm-";

/// Where device-mapper's control node is when the kernel has it.
pub const DM_CONTROL: &str = "/dev/mapper/control";

/// Runs a host program; the real one is [`cmd::run`], tests record.
pub trait Exec: Send + Sync {
    fn run(&self, program: &str, args: &[OsString]) -> Result<String, CmdError>;
}

/// [`cmd::run`].
pub struct SystemExec;

impl Exec for SystemExec {
    fn run(&self, program: &str, args: &[OsString]) -> Result<String, CmdError> {
        cmd::run(program, args)
    }
}

pub struct DmSnapshot {
    exec: Box<dyn Exec>,
}

impl Default for DmSnapshot {
    fn default() -> Self {
        DmSnapshot::new(Box::new(SystemExec))
    }
}

/// The device-mapper names of one VM's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmNames {
    pub snapshot: String,
    pub origin: String,
}

impl DmNames {
    /// The names for the disk at `dest` (`.../vms/NAME/root.cow`).
    pub fn of(dest: &Path) -> Result<DmNames, DiskError> {
        let vm = dest
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .filter(|n| banger_api::validate_vm_name(n).is_ok())
            .ok_or_else(|| {
                DiskError::Invalid(format!(
                    "{} is not in a VM's directory; dm-snapshot names its devices after the VM",
                    dest.display()
                ))
            })?;
        Ok(DmNames {
            snapshot: format!("{DM_PREFIX}{vm}"),
            origin: format!("{DM_PREFIX}{vm}-origin"),
        })
    }

    /// The path the VMM opens.
    pub fn device(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.snapshot)
    }
}

/// The COW file's length for a disk of `size_gib`: the disk plus 1/64 for
/// the exception store's metadata (it needs 1/256 with 4 KiB chunks), so
/// a guest that rewrites every block never overflows it. Sparse: only
/// what the guest writes takes space.
pub fn cow_len(size_gib: u32) -> u64 {
    (u64::from(size_gib) * 65) << 24
}

/// The disk size, in 512-byte sectors, a COW file of `len` bytes serves.
pub fn disk_sectors(cow_len: u64) -> u64 {
    cow_len / 65 * 64 / 512
}

/// The origin's table: the image, then zeros up to the disk size (the
/// guest grows its filesystem into them; its writes go to the COW file).
pub fn origin_table(base_dev: &str, base_sectors: u64, disk_sectors: u64) -> String {
    let mut t = format!("0 {base_sectors} linear {base_dev} 0");
    if disk_sectors > base_sectors {
        t.push_str(&format!(
            "\n{base_sectors} {} zero",
            disk_sectors - base_sectors
        ));
    }
    t
}

/// The snapshot's table: persistent (`P`), 4 KiB chunks.
pub fn snapshot_table(origin_dev: &str, cow_dev: &str, disk_sectors: u64) -> String {
    format!("0 {disk_sectors} snapshot {origin_dev} {cow_dev} P 8")
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `losetup --find --show [--read-only] FILE`: prints the device it took.
pub fn losetup_attach(file: &Path, readonly: bool) -> Vec<OsString> {
    let mut a = os(&["--find", "--show"]);
    if readonly {
        a.push("--read-only".into());
    }
    a.push(file.into());
    a
}

pub fn dmsetup_create(name: &str, table: &str) -> Vec<OsString> {
    os(&["create", name, "--table", table])
}

pub fn dmsetup_remove(name: &str) -> Vec<OsString> {
    os(&["remove", "--retry", name])
}

/// Names in `dmsetup ls` output that are banger's (`NAME\t(MAJ:MIN)`).
pub fn parse_dmsetup_ls(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(DM_PREFIX))
        .map(str::to_string)
        .collect()
}

/// `(device, backing file)` pairs from
/// `losetup --list --noheadings --output NAME,BACK-FILE`.
pub fn parse_losetup_list(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (dev, file) = l.trim().split_once(char::is_whitespace)?;
            Some((dev.to_string(), file.trim().to_string()))
        })
        .collect()
}

/// The VM a banger device-mapper name belongs to.
fn vm_of(dm_name: &str) -> &str {
    let rest = dm_name.strip_prefix(DM_PREFIX).unwrap_or(dm_name);
    rest.strip_suffix("-origin").unwrap_or(rest)
}

impl DmSnapshot {
    pub fn new(exec: Box<dyn Exec>) -> Self {
        DmSnapshot { exec }
    }

    fn run(&self, program: &str, args: Vec<OsString>) -> Result<String, DiskError> {
        Ok(self.exec.run(program, &args)?)
    }

    fn exists(&self, name: &str) -> bool {
        self.run("dmsetup", os(&["info", name])).is_ok()
    }

    fn remove_device(&self, name: &str) -> Result<(), DiskError> {
        if self.exists(name) {
            self.run("dmsetup", dmsetup_remove(name))?;
        }
        Ok(())
    }

    fn detach_loop(&self, dev: &str) {
        if let Err(e) = self.run("losetup", os(&["--detach", dev])) {
            tracing::warn!("detaching {dev}: {e}");
        }
    }

    /// Loops still attached to `file` (a crash between `losetup` and the
    /// lazy detach).
    fn loops_of(&self, file: &Path) -> Vec<String> {
        let mut a = os(&["--list", "--noheadings", "--output", "NAME", "--associated"]);
        a.push(file.into());
        self.run("losetup", a)
            .map(|out| out.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Sets up both devices; on failure, undoes what it made.
    fn set_up(&self, names: &DmNames, base: &Path, dest: &Path) -> Result<(), DiskError> {
        let base_len = std::fs::metadata(base)
            .map_err(|e| DiskError::io(base, e))?
            .len();
        let cow = std::fs::metadata(dest)
            .map_err(|e| DiskError::io(dest, e))?
            .len();
        let (base_sectors, sectors) = (base_len / 512, disk_sectors(cow));
        let base_loop = self.run("losetup", losetup_attach(base, true))?;
        let base_loop = base_loop.trim().to_string();
        let mut loops = vec![base_loop.clone()];
        let made = (|| {
            let cow_loop = self.run("losetup", losetup_attach(dest, false))?;
            let cow_loop = cow_loop.trim().to_string();
            loops.push(cow_loop.clone());
            let table = origin_table(&base_loop, base_sectors, sectors);
            self.run("dmsetup", dmsetup_create(&names.origin, &table))?;
            let origin = format!("/dev/mapper/{}", names.origin);
            let table = snapshot_table(&origin, &cow_loop, sectors);
            self.run("dmsetup", dmsetup_create(&names.snapshot, &table))?;
            Ok::<(), DiskError>(())
        })();
        if let Err(e) = made {
            let _ = self.remove_device(&names.snapshot);
            let _ = self.remove_device(&names.origin);
            for l in &loops {
                self.detach_loop(l);
            }
            return Err(e);
        }
        // Lazy detach: freed when device-mapper lets go of them.
        for l in &loops {
            self.detach_loop(l);
        }
        Ok(())
    }
}

impl CowDisk for DmSnapshot {
    fn strategy(&self) -> Strategy {
        Strategy::DmSnapshot
    }
    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }
    fn available(&self, _dir: &Path) -> bool {
        Path::new(DM_CONTROL).exists()
            && cmd::which("dmsetup").is_some()
            && cmd::which("losetup").is_some()
    }
    fn create(&self, _base: &Path, dest: &Path, size_gib: u32) -> Result<(), DiskError> {
        DmNames::of(dest)?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| DiskError::io(dest, e))?;
        f.set_len(cow_len(size_gib)).map_err(|e| {
            let _ = std::fs::remove_file(dest);
            DiskError::io(dest, e)
        })
    }
    fn activate(&self, base: &Path, dest: &Path) -> Result<PathBuf, DiskError> {
        let names = DmNames::of(dest)?;
        if self.exists(&names.snapshot) {
            return Ok(names.device());
        }
        // What a crash in an earlier activation left.
        self.deactivate(dest)?;
        self.set_up(&names, base, dest)?;
        Ok(names.device())
    }
    fn deactivate(&self, dest: &Path) -> Result<(), DiskError> {
        let names = DmNames::of(dest)?;
        if !Path::new(DM_CONTROL).exists() && !self.exists(&names.snapshot) {
            return Ok(());
        }
        self.remove_device(&names.snapshot)?;
        self.remove_device(&names.origin)?;
        for l in self.loops_of(dest) {
            self.detach_loop(&l);
        }
        Ok(())
    }
    fn leaked(&self, known: &[PathBuf]) -> Vec<String> {
        if !self.available(Path::new("/")) {
            return Vec::new();
        }
        let owned: Vec<String> = known
            .iter()
            .filter_map(|p| DmNames::of(p).ok())
            .map(|n| n.snapshot)
            .collect();
        let listed = self.run("dmsetup", os(&["ls"])).unwrap_or_default();
        let mut found = Vec::new();
        let mut names = parse_dmsetup_ls(&listed);
        // Snapshots before their origins: an origin is busy under its snapshot.
        names.sort_by_key(|n| n.ends_with("-origin"));
        for name in names {
            let vm = format!("{DM_PREFIX}{}", vm_of(&name));
            if !owned.contains(&vm) && self.remove_device(&name).is_ok() {
                found.push(format!("dm {name}"));
            }
        }
        let loops = self
            .run(
                "losetup",
                os(&["--list", "--noheadings", "--output", "NAME,BACK-FILE"]),
            )
            .unwrap_or_default();
        for (dev, file) in parse_losetup_list(&loops) {
            let ours = file.ends_with("/root.cow") || file.ends_with("/rootfs.ext4");
            let held = std::fs::read_dir(format!(
                "/sys/block/{}/holders",
                dev.trim_start_matches("/dev/")
            ))
            .is_ok_and(|mut d| d.next().is_some());
            if ours && !held {
                self.detach_loop(&dev);
                found.push(format!("loop {dev} ({file})"));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records every command; answers from a script, fails the one asked.
    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        fail_on: Option<&'static str>,
        existing: Arc<Mutex<Vec<String>>>,
    }

    impl Exec for Recorder {
        fn run(&self, program: &str, args: &[OsString]) -> Result<String, CmdError> {
            let line = std::iter::once(program.to_string())
                .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(" ");
            self.log.lock().unwrap().push(line.clone());
            let fail = || CmdError::Failed {
                command: line.clone(),
                status: "exit status: 1".into(),
                stderr: "injected".into(),
            };
            if self.fail_on.is_some_and(|f| line.starts_with(f)) {
                return Err(fail());
            }
            let mut existing = self.existing.lock().unwrap();
            match args.first().and_then(|a| a.to_str()) {
                Some("info") if !existing.iter().any(|n| line.ends_with(n.as_str())) => Err(fail()),
                Some("create") => {
                    existing.push(args[1].to_string_lossy().into_owned());
                    Ok(String::new())
                }
                Some("remove") => {
                    let n = args[2].to_string_lossy();
                    existing.retain(|e| *e != n);
                    Ok(String::new())
                }
                Some("--find") if args.len() == 4 => Ok("/dev/loop3\n".into()),
                Some("--find") => Ok("/dev/loop4\n".into()),
                _ => Ok(String::new()),
            }
        }
    }

    fn bed() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("rootfs.ext4");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let vm = dir.path().join("vms/dev");
        std::fs::create_dir_all(&vm).unwrap();
        (dir, base, vm.join("root.cow"))
    }

    #[test]
    fn tables_and_sizes() {
        assert_eq!(disk_sectors(cow_len(4)), 4 << 21, "4 GiB in sectors");
        assert_eq!(
            origin_table("/dev/loop3", 100, 300),
            "0 100 linear /dev/loop3 0\n100 200 zero"
        );
        assert_eq!(
            origin_table("/dev/loop3", 300, 300),
            "0 300 linear /dev/loop3 0"
        );
        assert_eq!(
            snapshot_table("/dev/mapper/o", "/dev/loop4", 300),
            "0 300 snapshot /dev/mapper/o /dev/loop4 P 8"
        );
        let n = DmNames::of(Path::new("/var/lib/banger/vms/dev/root.cow")).unwrap();
        assert_eq!(n.snapshot, "banger-vm-dev");
        assert_eq!(n.origin, "banger-vm-dev-origin");
        assert_eq!(n.device(), Path::new("/dev/mapper/banger-vm-dev"));
        assert!(DmNames::of(Path::new("/x/Bad Name/root.cow")).is_err());
        assert_eq!(vm_of("banger-vm-a-b-origin"), "a-b");
        assert_eq!(vm_of("banger-vm-a-b"), "a-b");
    }

    #[test]
    fn parses_the_listings() {
        let ls = "banger-vm-dev\t(254:1)\nbanger-vm-dev-origin\t(254:0)\nother\t(254:2)\n";
        assert_eq!(
            parse_dmsetup_ls(ls),
            ["banger-vm-dev", "banger-vm-dev-origin"]
        );
        assert_eq!(parse_dmsetup_ls("No devices found\n"), Vec::<String>::new());
        let lo = "/dev/loop0 /var/lib/banger/vms/a/root.cow\n/dev/loop1 /srv/with space.img\n";
        assert_eq!(
            parse_losetup_list(lo),
            [
                ("/dev/loop0".into(), "/var/lib/banger/vms/a/root.cow".into()),
                ("/dev/loop1".into(), "/srv/with space.img".into())
            ]
        );
    }

    #[test]
    fn activation_makes_origin_then_snapshot_and_detaches_the_loops_lazily() {
        let (_dir, base, dest) = bed();
        let rec = Recorder::default();
        let dm = DmSnapshot::new(Box::new(rec.clone()));
        dm.create(&base, &dest, 1).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), cow_len(1));
        let dev = dm.activate(&base, &dest).unwrap();
        assert_eq!(dev, Path::new("/dev/mapper/banger-vm-dev"));
        let log = rec.log.lock().unwrap().clone();
        let made: Vec<&String> = log
            .iter()
            .filter(|l| !l.starts_with("dmsetup info") && !l.contains("--list"))
            .collect();
        let base_s = base.display();
        let dest_s = dest.display();
        assert_eq!(
            made,
            [
                &format!("losetup --find --show --read-only {base_s}"),
                &format!("losetup --find --show {dest_s}"),
                &"dmsetup create banger-vm-dev-origin --table 0 2048 linear /dev/loop3 0\n2048 2095104 zero".to_string(),
                &"dmsetup create banger-vm-dev --table 0 2097152 snapshot /dev/mapper/banger-vm-dev-origin /dev/loop4 P 8".to_string(),
                &"losetup --detach /dev/loop3".to_string(),
                &"losetup --detach /dev/loop4".to_string(),
            ]
        );
        // Active already: nothing more is made.
        rec.log.lock().unwrap().clear();
        dm.activate(&base, &dest).unwrap();
        assert!(rec
            .log
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.starts_with("dmsetup info")));
        dm.deactivate(&dest).unwrap();
        assert!(rec.existing.lock().unwrap().is_empty(), "devices left");
        let log = rec.log.lock().unwrap().clone();
        let snap = log
            .iter()
            .position(|l| l == "dmsetup remove --retry banger-vm-dev");
        let origin = log
            .iter()
            .position(|l| l == "dmsetup remove --retry banger-vm-dev-origin");
        assert!(snap.is_some() && snap < origin, "{log:?}");
        dm.deactivate(&dest).unwrap();
        dm.remove(&dest).unwrap();
        assert!(!dest.exists(), "delete keeps the COW file");
    }

    #[test]
    fn a_failed_step_undoes_what_it_made() {
        for step in [
            "losetup --find --show /",
            "dmsetup create banger-vm-dev-origin",
            "dmsetup create banger-vm-dev ",
        ] {
            let (_dir, base, dest) = bed();
            let rec = Recorder {
                fail_on: Some(step),
                ..Recorder::default()
            };
            let dm = DmSnapshot::new(Box::new(rec.clone()));
            dm.create(&base, &dest, 1).unwrap();
            let e = dm.activate(&base, &dest).unwrap_err().to_string();
            assert!(e.contains("injected"), "{step}: {e}");
            assert!(
                rec.existing.lock().unwrap().is_empty(),
                "{step}: devices left"
            );
            let log = rec.log.lock().unwrap().clone();
            assert!(
                log.iter().any(|l| l == "losetup --detach /dev/loop3"),
                "{step}: the image's loop stayed: {log:?}"
            );
            assert!(dest.exists(), "the COW file (the VM's data) must stay");
        }
    }
}
