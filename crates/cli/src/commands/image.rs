//! `banger image build|create|list|rm`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use banger_api::{ImageBuildSpec, ImageInfo, Request};
use clap::Subcommand;

use crate::{output, rpc};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian packages (mmdebstrap): a new version
    /// of NAME, which new VMs get; existing VMs keep theirs.
    Build {
        #[arg(default_value = "default")]
        name: String,
        /// Debian packages beyond the base set (comma-separated; repeatable).
        #[arg(long, value_name = "PKG,...")]
        include: Vec<String>,
        /// A script run as root in the image's root after the packages are
        /// installed (read here, with your rights).
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        /// The Debian suite.
        #[arg(long, default_value = "bookworm", value_parser = clap::builder::PossibleValuesParser::new(banger_api::imagespec::SUITES))]
        suite: String,
    },
    /// Make a new version of NAME from a stopped VM's disk (as `docker
    /// commit`); new VMs of NAME get it.
    Create {
        name: String,
        #[arg(long, value_name = "VM")]
        from_vm: String,
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
        ImageCommand::Build {
            name,
            include,
            script,
            suite,
        } => {
            banger_api::validate_image_name(&name)?;
            let spec = build_spec(&include, script.as_deref(), suite)?;
            let info: ImageInfo = rpc::call(socket, &Request::ImageBuild { name, spec })?;
            eprintln!(
                "built image {} version {} (kernel {}, {} MiB root filesystem); new VMs get it",
                info.name,
                info.version,
                info.kernel,
                info.rootfs_bytes >> 20
            );
        }
        ImageCommand::Create { name, from_vm } => {
            banger_api::validate_image_name(&name)?;
            banger_api::validate_vm_name(&from_vm)?;
            let req = Request::ImageCreate { name, from_vm };
            let info: ImageInfo = rpc::call(socket, &req)?;
            eprintln!(
                "made image {} version {} from {}; new VMs get it",
                info.name,
                info.version,
                info.from_vm.as_deref().unwrap_or("the VM")
            );
        }
        ImageCommand::List { json } => {
            let images: Vec<ImageInfo> = rpc::call(socket, &Request::ImageList)?;
            if json {
                output::print_json(&images)?;
            } else {
                let rows: Vec<Vec<String>> = images.iter().map(row).collect();
                output::table(&HEADERS, &rows);
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

/// The columns of `image list`, one per cell of [`row`].
const HEADERS: [&str; 10] = [
    "NAME",
    "VERSION",
    "SUITE",
    "KERNEL",
    "ROOTFS",
    "BUILT",
    "WITH",
    "USED BY",
    "TEMPLATES",
    "PATH",
];

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
        i.suite.clone(),
        i.kernel.clone(),
        format!("{}M", i.rootfs_bytes >> 20),
        output::age(i.built_at),
        built_with(i),
        users,
        templates,
        i.path.clone(),
    ]
}

/// What a version was made with beyond the base: `+jq,hello`, the build
/// script's digest, the VM it came from; `-` for a plain build.
fn built_with(i: &ImageInfo) -> String {
    let mut parts = Vec::new();
    if !i.includes.is_empty() {
        parts.push(format!("+{}", i.includes.join(",")));
    }
    if let Some(d) = &i.script_sha256 {
        parts.push(format!("script:{}", &d[..d.len().min(12)]));
    }
    if let Some(vm) = &i.from_vm {
        parts.push(format!("from {vm}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// The build's packages and script, checked here: the script is read with
/// the caller's rights, never by the daemon.
fn build_spec(
    include: &[String],
    script: Option<&Path>,
    suite: String,
) -> anyhow::Result<ImageBuildSpec> {
    let includes = include
        .iter()
        .flat_map(|s| banger_api::imagespec::split_includes(s))
        .collect();
    let script = match script {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--script {}: cannot read it as text", p.display()))?,
        ),
        None => None,
    };
    let spec = ImageBuildSpec {
        includes,
        script,
        suite,
    };
    spec.validate()?;
    Ok(spec)
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
            suite: "bookworm".into(),
            includes: vec!["jq".into()],
            script_sha256: Some("ba7816bf8f01cfea414140de".into()),
            from_vm: None,
        };
        let r = row(&i);
        assert_eq!(r.len(), HEADERS.len(), "a header per cell");
        assert_eq!((r[1].as_str(), r[7].as_str()), ("2 (current)", "a,b"));
        assert_eq!(
            (r[2].as_str(), r[6].as_str()),
            ("bookworm", "+jq script:ba7816bf8f01")
        );
        (i.current, i.used_by, i.includes, i.script_sha256) = (false, Vec::new(), Vec::new(), None);
        let r = row(&i);
        assert_eq!(
            (r[1].as_str(), r[6].as_str(), r[7].as_str()),
            ("2", "-", "-")
        );
        i.from_vm = Some("dev (default v2)".into());
        assert_eq!(row(&i)[6], "from dev (default v2)");
    }

    #[test]
    fn bad_packages_and_unreadable_scripts_stop_the_build_here() {
        let e = build_spec(&["jq;rm".into()], None, "bookworm".into()).unwrap_err();
        assert!(e.to_string().contains("not a Debian package name"), "{e}");
        let e =
            build_spec(&[], Some(Path::new("/nonexistent/s.sh")), "bookworm".into()).unwrap_err();
        assert!(
            format!("{e:#}").contains("--script /nonexistent/s.sh"),
            "{e:#}"
        );
        let ok = build_spec(&["jq,hello".into(), "tree".into()], None, "trixie".into()).unwrap();
        assert_eq!(ok.includes, ["jq", "hello", "tree"]);
    }

    #[test]
    fn an_older_daemon_answer_still_reads() {
        let old = r#"{"name":"default","path":"/x","rootfs_bytes":1,"kernel":"k","built_at":1}"#;
        let i: ImageInfo = serde_json::from_str(old).expect("compatible");
        assert_eq!((i.version, i.current, i.used_by.len()), (0, false, 0));
    }
}
