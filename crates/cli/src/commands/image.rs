//! `banger image build|list|rm`.

use std::path::Path;

use banger_api::{ImageInfo, Request};
use clap::Subcommand;

use crate::{output, rpc};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian packages (mmdebstrap).
    Build {
        #[arg(default_value = "default")]
        name: String,
    },
    /// List built images.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no VM uses.
    Rm { name: String },
}

pub fn run(cmd: ImageCommand, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Build { name } => {
            banger_api::validate_image_name(&name)?;
            let info: ImageInfo = rpc::call(socket, &Request::ImageBuild { name })?;
            eprintln!(
                "built image {} (kernel {}, {} MiB root filesystem)",
                info.name,
                info.kernel,
                info.rootfs_bytes >> 20
            );
        }
        ImageCommand::List { json } => {
            let images: Vec<ImageInfo> = rpc::call(socket, &Request::ImageList)?;
            if json {
                output::print_json(&images)?;
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.kernel.clone(),
                            format!("{}M", i.rootfs_bytes >> 20),
                            output::age(i.built_at),
                            i.path.clone(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "KERNEL", "ROOTFS", "BUILT", "PATH"], &rows);
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
