//! What an image file is: raw (an ext4 filesystem) or a qcow2 layer (an
//! image made by `image create --from-vm`), and how big the disk it holds
//! is. Read from the file's header, no program run.

use std::io::Read;
use std::path::Path;

use crate::vmm::DiskFormat;

/// qcow2's magic, the first four bytes of every qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The format of the image file at `path` (raw when it cannot be read: the
/// program that opens it next reports the error).
pub fn format(path: &Path) -> DiskFormat {
    match header(path) {
        Some(h) if &h[..4] == QCOW2_MAGIC => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

/// The size of the disk the file holds: a qcow2's virtual size, a raw
/// file's length; 0 when it cannot be read.
pub fn virtual_size(path: &Path) -> u64 {
    match header(path) {
        // Bytes 24..32 of the header: the virtual size, big-endian.
        Some(h) if &h[..4] == QCOW2_MAGIC => {
            u64::from_be_bytes([h[24], h[25], h[26], h[27], h[28], h[29], h[30], h[31]])
        }
        _ => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    }
}

/// Whether a qcow2 file's header has it keep its data in an external file
/// (qcow2 v3, incompatible feature bit 2), which banger never makes: a
/// header that names one (written by a VMM a guest took over) would have
/// every later reader of the image, root's `qemu-img` included, open and
/// read that file. Unreadable or not qcow2: false.
pub fn external_data_file(path: &Path) -> bool {
    let mut h = [0u8; 80];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut h));
    if read.is_err() || &h[..4] != QCOW2_MAGIC {
        return false;
    }
    let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    // Bytes 72..80 (version 3 on): the incompatible features.
    let incompatible = u64::from_be_bytes([h[72], h[73], h[74], h[75], h[76], h[77], h[78], h[79]]);
    version >= 3 && incompatible & (1 << 2) != 0
}

fn header(path: &Path) -> Option<[u8; 32]> {
    let mut h = [0u8; 32];
    std::fs::File::open(path).ok()?.read_exact(&mut h).ok()?;
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qcow2_header_says_its_virtual_size() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        let mut h = QCOW2_MAGIC.to_vec();
        h.resize(24, 0);
        h.extend_from_slice(&(4u64 << 30).to_be_bytes());
        h.resize(512, 0);
        std::fs::write(&q, &h).unwrap();
        assert_eq!(format(&q), DiskFormat::Qcow2);
        assert_eq!(virtual_size(&q), 4 << 30);
        let raw = dir.path().join("r");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!((format(&raw), virtual_size(&raw)), (DiskFormat::Raw, 4096));
        let missing = dir.path().join("none");
        assert_eq!(
            (format(&missing), virtual_size(&missing)),
            (DiskFormat::Raw, 0)
        );
    }
}
