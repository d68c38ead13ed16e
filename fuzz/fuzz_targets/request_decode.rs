//! The daemon's request decoding, as `server::read_request` and
//! `server::parse_request` do it (both private; the harness repeats their
//! framing): the bytes up to the first newline (at most `MAX_REQUEST`
//! without it), UTF-8, decoded into `banger_api::Request`; then the checks
//! the service makes before any side effect (names, signal, mode).
#![no_main]

use banger_api::{validate_image_name, validate_vm_name, ApiError, ErrorCode, Event, Request};
use banger_fuzz::doc_valid_name;
use bangerd::server::MAX_REQUEST;
use bangerd::vmm::process::parse_signal;
use bangerd::workspace::Mode;
use libfuzzer_sys::fuzz_target;

fn check_vm_name(name: &str) {
    let r = validate_vm_name(name);
    assert_eq!(r.is_ok(), doc_valid_name(name), "VM name {name:?}: {r:?}");
    if let Err(e) = r {
        assert_eq!(e.code, ErrorCode::InvalidName);
        assert!(!e.message.contains('\n'));
    }
}

fn check_image_name(name: &str) {
    let r = validate_image_name(name);
    assert_eq!(
        r.is_ok(),
        doc_valid_name(name),
        "image name {name:?}: {r:?}"
    );
}

/// A refusal goes back as one `error` line.
fn check_refusal(message: String) {
    let err = ApiError::new(ErrorCode::InvalidArgument, message);
    let text = serde_json::to_string(&Event::Error(err)).expect("an error encodes");
    assert!(!text.contains('\n'));
}

fuzz_target!(|data: &[u8]| {
    let max = usize::try_from(MAX_REQUEST).expect("MAX_REQUEST fits");
    // read_until(b'\n') over take(MAX_REQUEST + 1).
    let data = &data[..data.len().min(max + 1)];
    let buf = match data.iter().position(|&b| b == b'\n') {
        Some(i) => &data[..=i],
        None => data,
    };
    let line = match buf.strip_suffix(b"\n") {
        Some(line) => line,
        None if buf.is_empty() => return,
        None if buf.len() > max => return,
        None => buf,
    };
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => return check_refusal(format!("request is not UTF-8 (at {})", e.valid_up_to())),
    };
    let req = match serde_json::from_str::<Request>(text) {
        Ok(req) => req,
        Err(e) => {
            return check_refusal(format!(
                "malformed request: {e}; is the CLI the same version as the daemon?"
            ))
        }
    };

    // What the daemon decoded, the CLI can have sent: it round-trips.
    let text = serde_json::to_string(&req).expect("a decoded request encodes");
    assert!(!text.contains('\n'), "a request is one line: {text}");
    let again: Request = serde_json::from_str(&text).expect("an encoded request decodes");
    assert_eq!(again, req);

    if let Some(name) = req.vm_name() {
        check_vm_name(name);
    }
    match &req {
        Request::VmCreate { spec } => check_image_name(&spec.image),
        Request::ImageBuild { name, .. }
        | Request::ImageRm { name }
        | Request::ImageCreate { name, .. } => check_image_name(name),
        Request::VmKill { signal, .. } => {
            if parse_signal(signal).is_some() {
                let s = signal.to_ascii_uppercase();
                let s = s.trim_start_matches("SIG");
                assert!(
                    ["KILL", "TERM", "INT", "HUP", "QUIT"].contains(&s),
                    "signal {signal:?} accepted"
                );
            }
        }
        Request::WorkspacePrepare { mode, .. } => {
            if let Some(m) = Mode::parse(mode) {
                assert_eq!(Mode::parse(m.as_str()), Some(m));
            }
        }
        _ => {}
    }
});
