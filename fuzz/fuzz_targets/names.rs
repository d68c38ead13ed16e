//! `validate_vm_name` and `validate_image_name` against the documented
//! rule: valid exactly when 1-32 characters of `[a-z0-9-]` with no leading
//! or trailing `-`; a refusal is `invalid_name` with a one-line message.
#![no_main]

use banger_api::{validate_image_name, validate_vm_name, ErrorCode};
use banger_fuzz::{doc_valid_name, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = text(data);
    let want = doc_valid_name(name);
    for (what, r) in [
        ("VM name", validate_vm_name(name)),
        ("image name", validate_image_name(name)),
    ] {
        match r {
            Ok(()) => {
                assert!(want, "{what} {name:?} accepted against the rule");
                // A valid name is a safe path component and DNS label.
                assert!(name.len() <= 32 && !name.contains(['/', '.', '\0']));
            }
            Err(e) => {
                assert!(!want, "{what} {name:?} refused: {}", e.message);
                assert_eq!(e.code, ErrorCode::InvalidName);
                assert!(!e.message.contains('\n'), "{:?}", e.message);
                assert!(e.message.contains(what));
            }
        }
    }
});
