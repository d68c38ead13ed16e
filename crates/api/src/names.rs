//! Name rules: VM names are DNS labels, checked before any side effect.

use crate::error::{ApiError, ErrorCode};

/// Longest VM name accepted.
pub const MAX_VM_NAME: usize = 32;

/// Checks that `name` is a DNS label: `[a-z0-9-]`, 1 to 32 characters, no
/// leading or trailing `-`.
pub fn validate_vm_name(name: &str) -> Result<(), ApiError> {
    check_label("VM name", name, MAX_VM_NAME)
}

/// Image names follow the same rule as VM names.
pub fn validate_image_name(name: &str) -> Result<(), ApiError> {
    check_label("image name", name, MAX_VM_NAME)
}

fn check_label(what: &str, name: &str, max: usize) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidName,
            format!("invalid {what} {name:?}: {why}; use 1-{max} characters of a-z, 0-9 and '-', not starting or ending with '-'"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > max {
        return bad("it is too long");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it starts or ends with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "dev", "dev-2", "0", &"a".repeat(32)] {
            assert!(validate_vm_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "-dev",
            "dev-",
            "Dev",
            "dev_1",
            "dev.vm",
            "dév",
            "a b",
            "../x",
            &"a".repeat(33),
        ] {
            let err = validate_vm_name(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidName, "{bad}");
            assert!(!err.message.contains('\n'));
        }
    }
}
