//! Keeps a log file under a size limit by dropping its oldest half. The
//! writer (the VMM) appends, so it carries on at the new end.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// If `path` is over `max` bytes, keeps only its last `max / 2` bytes.
pub fn cap(path: &Path, max: u64) -> std::io::Result<()> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(());
    }
    let keep = max / 2;
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    f.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    f.read_to_end(&mut tail)?;
    // Start at a line boundary.
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(b"[banger: older console output dropped]\n")?;
    f.write_all(&tail[start..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_newest_lines_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        super::cap(&p, 1000).unwrap();
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(after.len() <= 1000, "{}", after.len());
        assert!(after.ends_with("line 999\n"));
        assert!(after.lines().nth(1).unwrap().starts_with("line "));
        super::cap(&p, 1000).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            after,
            "under the cap: untouched"
        );
        super::cap(&dir.path().join("missing"), 10).unwrap();
    }
}
