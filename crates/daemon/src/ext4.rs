//! Building ext4 images from a directory tree (`mkfs.ext4 -d`): root
//! filesystems, config drives, workspace images.

use std::ffi::OsStr;
use std::path::Path;

use crate::cmd::{self, CmdError};

/// Makes an ext4 filesystem labelled `label` at `dest` (replaced), `size`
/// big (`mkfs` units such as `512M`), holding a copy of `tree`. `extra`
/// goes before the device (e.g. `["-N", "30000"]`).
pub fn make(
    tree: &Path,
    dest: &Path,
    label: &str,
    size: &str,
    extra: &[&str],
) -> Result<(), CmdError> {
    let _ = std::fs::remove_file(dest);
    let mut args: Vec<&OsStr> = vec!["-q".as_ref(), "-F".as_ref(), "-L".as_ref(), label.as_ref()];
    args.extend(extra.iter().map(|a| OsStr::new(*a)));
    args.extend([
        "-d".as_ref(),
        tree.as_os_str(),
        dest.as_os_str(),
        size.as_ref(),
    ]);
    cmd::run("mkfs.ext4", &args)?;
    Ok(())
}
