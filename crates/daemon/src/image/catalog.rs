//! The image catalog: what is built under the image directory.

use crate::pathio::FromPathIo;
use banger_api::ImageInfo;

use super::{ImageError, Manifest};
use crate::layout::{ImagePaths, Layout};

/// Every complete image, by name.
pub fn list(layout: &Layout) -> Result<Vec<ImageInfo>, ImageError> {
    let dir = &layout.image_dir;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<ImageInfo> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| info(&ImagePaths::new(e.path())))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One image's description, if it is complete.
pub fn info(paths: &ImagePaths) -> Option<ImageInfo> {
    let text = std::fs::read_to_string(paths.manifest()).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    let rootfs_bytes = std::fs::metadata(paths.rootfs()).ok()?.len();
    Some(ImageInfo {
        name: m.name,
        path: paths.dir.display().to_string(),
        rootfs_bytes,
        kernel: m.kernel,
        built_at: m.built_at,
    })
}

/// Removes an image directory.
pub fn remove(paths: &ImagePaths) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(&paths.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io(&paths.dir, e)),
        _ => Ok(()),
    }
}
