//! The uncompressed kernel (ELF `vmlinux`) Firecracker boots, taken out of
//! the Debian kernel's `bzImage`, so one image serves both backends. The
//! boot protocol header (2.08+) says where the compressed payload is
//! (`payload_offset`, `payload_length`); Debian's cloud kernel compresses
//! it with LZ4 in the legacy frame format (independent blocks of up to
//! 8 MiB, the uncompressed size appended), which this module unpacks. A
//! payload compressed otherwise is refused with what to do instead.

use std::path::Path;

use super::ImageError;
use crate::pathio::FromPathIo;

const ELF_MAGIC: &[u8] = b"\x7fELF";
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;

fn bad(why: impl Into<String>) -> ImageError {
    ImageError::Failed(why.into())
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage.
pub fn payload(bzimage: &[u8]) -> Result<&[u8], ImageError> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("not a bzImage (no HdrS boot header)"));
    }
    let version = u16::from_le_bytes([bzimage[0x206], bzimage[0x207]]);
    if version < 0x208 {
        return Err(bad(format!(
            "boot protocol {version:#x} has no payload fields (2.08 or newer needed)"
        )));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(bzimage, 0x248).ok_or_else(|| bad("truncated header"))? as usize;
    let length = u32_at(bzimage, 0x24c).ok_or_else(|| bad("truncated header"))? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    bzimage
        .get(start..start + length)
        .ok_or_else(|| bad("the payload lies beyond the end of the file"))
}

/// The ELF kernel inside `bzimage`.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut elf = Vec::new();
    extract_to(bzimage, &mut elf)?;
    Ok(elf)
}

/// Writes the ELF kernel inside `bzimage` to `out`, a block at a time
/// (the daemon never holds the whole unpacked kernel, ~60 MiB).
pub fn extract_to(bzimage: &[u8], out: &mut impl std::io::Write) -> Result<(), ImageError> {
    let p = payload(bzimage)?;
    let mut first = [0u8; 4];
    if p.starts_with(ELF_MAGIC) {
        first.copy_from_slice(&p[..4]);
        out.write_all(p)
            .map_err(|e| bad(format!("writing vmlinux: {e}")))?;
    } else if u32_at(p, 0) == Some(LZ4_LEGACY_MAGIC) {
        lz4_legacy_to(p, &mut first, out)?;
    } else {
        let kind = match p.get(..4) {
            Some([0x1f, 0x8b, ..]) => "gzip",
            Some([0xfd, b'7', b'z', b'X']) => "xz",
            Some([0x28, 0xb5, 0x2f, 0xfd]) => "zstd",
            _ => "an unknown method",
        };
        return Err(bad(format!(
            "the kernel is compressed with {kind}, which banger does not unpack; \
             make vmlinux with the kernel's scripts/extract-vmlinux and put it beside vmlinuz"
        )));
    }
    if first != ELF_MAGIC {
        return Err(bad("the unpacked kernel is not an ELF file"));
    }
    Ok(())
}

/// Writes the vmlinux inside the bzImage at `bzimage` to `dest`.
pub fn write(bzimage: &Path, dest: &Path) -> Result<(), ImageError> {
    let data = std::fs::read(bzimage).map_err(|e| ImageError::io(bzimage, e))?;
    let file = std::fs::File::create(dest).map_err(|e| ImageError::io(dest, e))?;
    let mut out = std::io::BufWriter::new(file);
    extract_to(&data, &mut out).map_err(|e| bad(format!("{}: {e}", bzimage.display())))?;
    std::io::Write::flush(&mut out).map_err(|e| ImageError::io(dest, e))
}

/// Whether the ELF kernel at `path` has a PVH entry point (the
/// `XEN_ELFNOTE_PHYS32_ENTRY` note, which kernels built with `CONFIG_PVH`
/// carry): QEMU boots such an ELF directly, and refuses one without it.
pub fn has_pvh_entry(path: &Path) -> bool {
    std::fs::File::open(path)
        .and_then(|mut f| pvh_entry_in(&mut f))
        .unwrap_or(false)
}

/// The ELF notes' search for [`has_pvh_entry`], reading only the headers
/// and the note segments.
fn pvh_entry_in(f: &mut (impl std::io::Read + std::io::Seek)) -> std::io::Result<bool> {
    use std::io::SeekFrom;
    const PT_NOTE: u32 = 4;
    const PHYS32_ENTRY: u32 = 18;
    let mut header = [0u8; 64];
    f.read_exact(&mut header)?;
    // 64-bit, little-endian.
    if &header[..4] != ELF_MAGIC || header[4] != 2 || header[5] != 1 {
        return Ok(false);
    }
    let u16_at = |d: &[u8], at: usize| usize::from(u16::from_le_bytes([d[at], d[at + 1]]));
    let u64_at =
        |d: &[u8], at: usize| u64::from_le_bytes(d[at..at + 8].try_into().unwrap_or_default());
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    );
    if phentsize < 56 || phnum > 128 {
        return Ok(false);
    }
    let mut table = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    f.read_exact(&mut table)?;
    for ph in table.chunks(phentsize) {
        let (kind, offset, size) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 32));
        if kind != Some(PT_NOTE) || size > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut notes)?;
        let mut at = 0;
        let align = |n: usize| (n + 3) & !3;
        while let (Some(namesz), Some(descsz), Some(kind)) = (
            u32_at(&notes, at),
            u32_at(&notes, at + 4),
            u32_at(&notes, at + 8),
        ) {
            let name = notes.get(at + 12..at + 12 + namesz as usize);
            if name == Some(b"Xen\0") && kind == PHYS32_ENTRY {
                return Ok(true);
            }
            at += 12 + align(namesz as usize) + align(descsz as usize);
        }
    }
    Ok(false)
}

/// LZ4's legacy frame: the magic, then blocks (`u32` compressed size, the
/// block), as the kernel's build writes it: its uncompressed size last.
pub fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    lz4_legacy_to(data, &mut [0u8; 4], &mut out)?;
    Ok(out)
}

/// [`lz4_legacy`] to a writer, one block (at most 8 MiB) in memory at a
/// time: the legacy format's blocks are independent. `first` gets the
/// first four bytes unpacked.
fn lz4_legacy_to(
    data: &[u8],
    first: &mut [u8; 4],
    w: &mut impl std::io::Write,
) -> Result<(), ImageError> {
    let size = data.len().checked_sub(4).and_then(|at| u32_at(data, at));
    let expected = size.ok_or_else(|| bad("LZ4 payload too short"))? as usize;
    let mut written = 0usize;
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= data.len() && written < expected {
        let n = u32_at(data, at).unwrap_or(0) as usize;
        at += 4;
        if n as u32 == LZ4_LEGACY_MAGIC {
            continue; // frames concatenated
        }
        let block = data
            .get(at..at + n)
            .ok_or_else(|| bad("LZ4 block beyond the payload"))?;
        out.clear();
        lz4_block(block, &mut out)?;
        if written == 0 && out.len() >= 4 {
            first.copy_from_slice(&out[..4]);
        }
        w.write_all(&out)
            .map_err(|e| bad(format!("writing vmlinux: {e}")))?;
        written += out.len();
        at += n;
    }
    if written != expected {
        return Err(bad(format!(
            "LZ4 payload unpacked to {written} bytes, the kernel says {expected}"
        )));
    }
    Ok(())
}

/// One LZ4 block, appended to `out`.
pub fn lz4_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), ImageError> {
    let corrupt = || bad("corrupt LZ4 block");
    let mut i = 0;
    let len = |i: &mut usize, mut n: usize| -> Result<usize, ImageError> {
        if n == 15 {
            loop {
                let b = *block.get(*i).ok_or_else(corrupt)?;
                *i += 1;
                n += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        Ok(n)
    };
    while i < block.len() {
        let token = block[i];
        i += 1;
        let literals = len(&mut i, usize::from(token >> 4))?;
        out.extend_from_slice(block.get(i..i + literals).ok_or_else(corrupt)?);
        i += literals;
        if i == block.len() {
            break; // the last sequence has literals only
        }
        let offset = usize::from(u16::from_le_bytes([
            *block.get(i).ok_or_else(corrupt)?,
            *block.get(i + 1).ok_or_else(corrupt)?,
        ]));
        i += 2;
        let matched = len(&mut i, usize::from(token & 15))? + 4;
        if offset == 0 || offset > out.len() {
            return Err(corrupt());
        }
        let from = out.len() - offset;
        for k in 0..matched {
            out.push(out[from + k]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped buffer around `payload`.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 5 * 512];
        d[0x1f1] = 4;
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        d[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        d[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        d.extend_from_slice(&[0u8; 16]);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn unpacks_literals_and_overlapping_matches() {
        // "\x7fELF" then "ab" repeated: literals, then a match of offset 2.
        let block = [0x60, 0x7f, b'E', b'L', b'F', b'a', b'b', 0x02, 0x00, 0x00];
        let mut out = Vec::new();
        lz4_block(&block[..9], &mut out).unwrap();
        assert_eq!(out, b"\x7fELFababab");
        let mut frame = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        frame.extend_from_slice(&9u32.to_le_bytes());
        frame.extend_from_slice(&block[..9]);
        frame.extend_from_slice(&10u32.to_le_bytes());
        assert_eq!(extract(&fake_bzimage(&frame)).unwrap(), b"\x7fELFababab");
        let gz = fake_bzimage(&[0x1f, 0x8b, 8, 0]);
        let e = extract(&gz).unwrap_err().to_string();
        assert!(e.contains("gzip") && e.contains("extract-vmlinux"), "{e}");
        assert!(extract(b"not a kernel").is_err());
        let mut bad_offset = Vec::new();
        assert!(lz4_block(&[0x10, b'x', 0x05, 0x00], &mut bad_offset).is_err());
    }

    /// The real Debian kernel of an image built here, when there is one.
    #[test]
    fn the_debian_kernel_unpacks_to_an_x86_64_elf() {
        let path = std::env::var_os("BANGER_TEST_VMLINUZ")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/var/cache/banger-smoke-image-v3/default/1/vmlinuz".into());
        let Ok(data) = std::fs::read(&path) else {
            eprintln!(
                "skipped: no built image kernel at {} (build one with `cargo xtask smoke`, or set BANGER_TEST_VMLINUZ)",
                path.display()
            );
            return;
        };
        let elf = extract(&data).unwrap();
        assert!(
            pvh_entry_in(&mut std::io::Cursor::new(&elf)).unwrap(),
            "no PVH entry point: QEMU would boot the bzImage"
        );
        assert_eq!(elf[4], 2, "64-bit");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0x3e, "x86-64");
        assert_eq!(u16::from_le_bytes([elf[16], elf[17]]), 2, "an executable");
        assert!(elf.len() > data.len(), "unpacked is bigger than packed");
        // Every loadable segment lies within the file.
        let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (
            usize::from(u16::from_le_bytes([elf[54], elf[55]])),
            usize::from(u16::from_le_bytes([elf[56], elf[57]])),
        );
        assert!(phnum > 0);
        for k in 0..phnum {
            let ph = &elf[phoff + k * phentsize..];
            let offset = u64::from_le_bytes(ph[8..16].try_into().unwrap()) as usize;
            let filesz = u64::from_le_bytes(ph[32..40].try_into().unwrap()) as usize;
            assert!(offset + filesz <= elf.len(), "segment {k} beyond the file");
        }
    }

    /// A 64-bit ELF header with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, kind) in notes {
            body.extend((name.len() as u32).to_le_bytes());
            body.extend(4u32.to_le_bytes());
            body.extend(kind.to_le_bytes());
            body.extend(*name);
            body.resize(body.len().next_multiple_of(4), 0);
            body.extend([1, 0, 0, 0]);
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(ELF_MAGIC);
        (elf[4], elf[5]) = (2, 1);
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut elf[64..];
        ph[..4].copy_from_slice(&4u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(body.len() as u64).to_le_bytes());
        elf.extend(body);
        elf
    }

    #[test]
    fn a_pvh_entry_is_the_xen_phys32_note() {
        let pvh = |elf: Vec<u8>| pvh_entry_in(&mut std::io::Cursor::new(elf)).unwrap_or(false);
        assert!(pvh(elf_with_notes(&[(b"GNU\0", 3), (b"Xen\0", 18)])));
        assert!(
            !pvh(elf_with_notes(&[(b"GNU\0", 3), (b"Xen\0", 17)])),
            "another Xen note"
        );
        assert!(!pvh(elf_with_notes(&[(b"Xe\0", 18)])), "another name");
        assert!(!pvh(elf_with_notes(&[])));
        assert!(!pvh(
            b"not an ELF at all, just some bytes of text to read".repeat(4)
        ));
        let mut cut = elf_with_notes(&[(b"Xen\0", 18)]);
        cut.truncate(100);
        assert!(!pvh(cut), "a cut file");
    }
}
