//! The daemon served in-process on a temporary socket, driven through the
//! real client: bad input is refused before any side effect. Needs no
//! privilege (nothing here touches the network or boots a VM).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

use banger_api::{ErrorCode, ImageInfo, Request, VmInfo, VmSpec};

mod common;

use common::daemon::Daemon;

fn spec(name: &str, image: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory_mib: 512,
        disk_gib: 4,
        image: image.into(),
        nat: false,
        authorized_keys: Vec::new(),
        cold: false,
        disk_strategy: None,
        ..Default::default()
    }
}

fn vm_dirs(state: &Path) -> usize {
    std::fs::read_dir(state.join("vms"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let d = Daemon::start("api");
    let vms: Vec<VmInfo> = d.call(Request::VmList).unwrap();
    assert!(vms.is_empty());

    let e = d
        .call::<VmInfo>(Request::VmCreate {
            spec: spec("Bad_Name", "default"),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidName);

    let e = d
        .call::<VmInfo>(Request::VmCreate {
            spec: spec("dev", "nosuch"),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.contains("banger image build nosuch"),
        "{}",
        e.message
    );

    let mut big = spec("dev", "default");
    big.cpus = 0;
    assert_eq!(
        d.call::<VmInfo>(Request::VmCreate { spec: big })
            .unwrap_err()
            .code,
        ErrorCode::InvalidArgument
    );

    for req in [
        Request::VmShow {
            name: "nope".into(),
        },
        Request::VmStart {
            name: "nope".into(),
        },
        Request::VmStop {
            name: "nope".into(),
        },
        Request::VmDelete {
            name: "nope".into(),
            force: true,
        },
        Request::VmSsh {
            name: "nope".into(),
        },
    ] {
        let e = d.call::<serde_json::Value>(req).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);
    }
    let e = d
        .call::<serde_json::Value>(Request::VmKill {
            name: "dev".into(),
            signal: "BOGUS".into(),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);

    let e = d
        .call::<serde_json::Value>(Request::ImageRm {
            name: "default".into(),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    let vms: Vec<VmInfo> = d.call(Request::VmList).unwrap();
    assert!(vms.is_empty(), "a refused request left a VM: {vms:?}");
    assert_eq!(vm_dirs(&d.state), 0, "a refused request left files");
    let images: Vec<ImageInfo> = d.call(Request::ImageList).unwrap();
    assert!(images.is_empty());
}

#[test]
fn daemon_owns_keys_and_ssh_config_with_tight_modes() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start("api");
    let v: serde_json::Value = d.call(Request::SshConfig).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Host *.vm"));
    assert!(text.contains("StrictHostKeyChecking yes"));
    let key = d.state.join("ssh/id_ed25519");
    assert!(key.exists());
    assert_eq!(
        std::fs::metadata(d.state.join("ssh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let ops: Vec<banger_api::OpInfo> = d.call(Request::OpList).unwrap();
    assert!(
        ops.iter().all(|o| o.kind != "vm_create"),
        "refused creates must not become operations"
    );
}

#[test]
fn a_malformed_request_gets_an_error_not_a_hangup() {
    use std::io::{BufRead, BufReader, Write};
    let d = Daemon::start("api");
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"op\":\"no_such_thing\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.contains("malformed request"), "{line}");
}
