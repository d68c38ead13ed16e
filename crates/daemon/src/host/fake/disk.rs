//! The fake disk: a small file stands for the disk; playing dm-snapshot, a
//! device (kept in the world) exists from activate to deactivate, so the
//! fault suite checks its cleanup contract too.

use std::path::{Path, PathBuf};

use super::World;
use crate::disk::{CowDisk, DiskError, Strategy};
use crate::pathio::FromPathIo;
use crate::vmm::DiskFormat;

pub struct FakeDisk(pub World);

impl FakeDisk {
    fn has_device(&self) -> bool {
        self.strategy() == Strategy::DmSnapshot
    }
}

impl CowDisk for FakeDisk {
    fn strategy(&self) -> Strategy {
        self.0.state().disk_strategy.unwrap_or(Strategy::Copy)
    }
    fn format(&self) -> DiskFormat {
        match self.strategy() {
            Strategy::Qcow2 => DiskFormat::Qcow2,
            _ => DiskFormat::Raw,
        }
    }
    fn create(&self, base: &Path, dest: &Path, _size_gib: u32) -> Result<(), DiskError> {
        self.0.hit("disk.create").map_err(DiskError::Failed)?;
        // What it is made over, as a qcow2 overlay names its backing file.
        let over = format!("disk over {}", base.display());
        std::fs::write(dest, over).map_err(|e| DiskError::io(dest, e))
    }
    fn activate(&self, _base: &Path, dest: &Path) -> Result<PathBuf, DiskError> {
        if self.has_device() {
            self.0.hit("disk.activate").map_err(DiskError::Failed)?;
            self.0.state().devices.insert(dest.to_path_buf());
        }
        Ok(dest.to_path_buf())
    }
    fn deactivate(&self, dest: &Path) -> Result<(), DiskError> {
        if self.has_device() && self.0.state().devices.contains(dest) {
            self.0.hit("disk.deactivate").map_err(DiskError::Failed)?;
            self.0.state().devices.remove(dest);
        }
        Ok(())
    }
    fn remove(&self, dest: &Path) -> Result<(), DiskError> {
        self.deactivate(dest)?;
        self.0.hit("disk.remove").map_err(DiskError::Failed)?;
        match std::fs::remove_file(dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DiskError::io(dest, e)),
            _ => Ok(()),
        }
    }
    fn leaked(&self, known: &[PathBuf]) -> Vec<String> {
        let mut st = self.0.state();
        let stray: Vec<PathBuf> = st
            .devices
            .iter()
            .filter(|d| !known.contains(d))
            .cloned()
            .collect();
        for d in &stray {
            st.devices.remove(d);
        }
        stray
            .iter()
            .map(|d| format!("device of {}", d.display()))
            .collect()
    }
}
