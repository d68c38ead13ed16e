//! `banger image build|list|rm`.

use std::path::Path;

use banger_api::{ImageInfo, Request};
use clap::Subcommand;

use crate::{output, rpc};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian packages (mmdebstrap): a new version
    /// of NAME, which new VMs get; existing VMs keep theirs.
    Build {
        #[arg(default_value = "default")]
        name: String,
    },
    /// List every version of each image: when it was built, which VMs use it.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image, every version; refused while a VM uses any of them.
    Rm { name: String },
}

pub fn run(cmd: ImageCommand, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Build { name } => {
            banger_api::validate_image_name(&name)?;
            let info: ImageInfo = rpc::call(socket, &Request::ImageBuild { name })?;
            eprintln!(
                "built image {} version {} (kernel {}, {} MiB root filesystem); new VMs get it",
                info.name,
                info.version,
                info.kernel,
                info.rootfs_bytes >> 20
            );
        }
        ImageCommand::List { json } => {
            let images: Vec<ImageInfo> = rpc::call(socket, &Request::ImageList)?;
            if json {
                output::print_json(&images)?;
            } else {
                let rows: Vec<Vec<String>> = images.iter().map(row).collect();
                output::table(
                    &[
                        "NAME",
                        "VERSION",
                        "KERNEL",
                        "ROOTFS",
                        "BUILT",
                        "USED BY",
                        "TEMPLATES",
                        "PATH",
                    ],
                    &rows,
                );
            }
        }
        ImageCommand::Rm { name } => {
            banger_api::validate_image_name(&name)?;
            let _: serde_json::Value = rpc::call(socket, &Request::ImageRm { name: name.clone() })?;
            eprintln!("removed image {name}");
        }
    }
    Ok(0)
}

/// One version as a row of `image list`: the current one marked, its VMs
/// by name.
fn row(i: &ImageInfo) -> Vec<String> {
    let version = match (i.version, i.current) {
        (v, true) => format!("{v} (current)"),
        (v, false) => v.to_string(),
    };
    let users = if i.used_by.is_empty() {
        "-".to_string()
    } else {
        i.used_by.join(",")
    };
    let templates = if i.templates.is_empty() {
        "-".to_string()
    } else {
        i.templates.join(",")
    };
    vec![
        i.name.clone(),
        version,
        i.kernel.clone(),
        format!("{}M", i.rootfs_bytes >> 20),
        output::age(i.built_at),
        users,
        templates,
        i.path.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_marks_the_current_version_and_names_its_vms() {
        let mut i = ImageInfo {
            name: "default".into(),
            path: "/var/lib/banger/images/default/2".into(),
            rootfs_bytes: 3 << 20,
            kernel: "6.1.0-cloud-amd64".into(),
            built_at: 0,
            version: 2,
            current: true,
            used_by: vec!["a".into(), "b".into()],
            templates: Vec::new(),
        };
        let r = row(&i);
        assert_eq!((r[1].as_str(), r[5].as_str()), ("2 (current)", "a,b"));
        (i.current, i.used_by) = (false, Vec::new());
        let r = row(&i);
        assert_eq!((r[1].as_str(), r[5].as_str()), ("2", "-"));
    }

    #[test]
    fn an_older_daemon_answer_still_reads() {
        let old = r#"{"name":"default","path":"/x","rootfs_bytes":1,"kernel":"k","built_at":1}"#;
        let i: ImageInfo = serde_json::from_str(old).expect("compatible");
        assert_eq!((i.version, i.current, i.used_by.len()), (0, false, 0));
    }
}
