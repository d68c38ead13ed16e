//! `vm cp` over the real socket, through the real client: an upload that
//! the daemon refuses at once (an unknown VM, a bad path) ends with the
//! daemon's one-line answer, not a broken pipe, however much the client
//! still had to send; a copy out of an unknown VM streams nothing. Needs no
//! privilege.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Write;

use banger_api::{client, ErrorCode, Request};

mod common;

use common::daemon::Daemon;

fn cp_in(name: &str, dest: &str) -> Request {
    Request::VmCpIn {
        name: name.into(),
        dest: dest.into(),
        source_name: "big".into(),
        source_is_dir: false,
        contents: false,
    }
}

#[test]
fn a_refused_upload_gets_the_daemons_answer() {
    let d = Daemon::start("cp");
    // 64 MiB: far more than the socket buffers; the daemon stops reading.
    let chunk = vec![7u8; 1 << 20];
    for (req, code, says) in [
        (
            cp_in("nosuch", "/root/x"),
            ErrorCode::NotFound,
            "no VM named",
        ),
        (
            cp_in("nosuch", ""),
            ErrorCode::InvalidArgument,
            "guest path",
        ),
        (
            cp_in("Bad", "/root"),
            ErrorCode::InvalidName,
            "invalid VM name",
        ),
    ] {
        let e = client::call_uploading::<serde_json::Value>(
            &d.socket,
            &req,
            |w| {
                for _ in 0..64 {
                    w.write_all(&chunk)?;
                }
                Ok(())
            },
            |_| {},
            |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.code, code, "{e:?}");
        assert!(e.message.contains(says), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }
    let e = client::call_streaming::<serde_json::Value>(
        &d.socket,
        &Request::VmCpOut {
            name: "nosuch".into(),
            src: "/etc".into(),
            contents: false,
        },
        |_| {},
        |_| panic!("no data for an unknown VM"),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    // The daemon still serves.
    let _: serde_json::Value = d.call(Request::Ping).unwrap();
}
