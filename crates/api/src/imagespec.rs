//! What `image build` may be asked beyond a name: extra Debian packages, a
//! script run in the image's root at build time, the Debian suite. Checked
//! on both sides of the socket before anything is built.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// Debian suites an image may be built from; the first is the default.
pub const SUITES: &[&str] = &["bookworm", "trixie"];

/// The most packages one build may add.
pub const MAX_INCLUDES: usize = 64;

/// The largest build script accepted.
pub const MAX_SCRIPT_BYTES: usize = 256 << 10;

/// How an image is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuildSpec {
    /// Debian packages beyond the base set.
    #[serde(default)]
    pub includes: Vec<String>,
    /// A script run as root in the image's root (chroot) after the
    /// packages are installed; its text, read by the CLI as the caller.
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default = "default_suite")]
    pub suite: String,
}

fn default_suite() -> String {
    SUITES[0].to_string()
}

impl Default for ImageBuildSpec {
    fn default() -> Self {
        Self {
            includes: Vec::new(),
            script: None,
            suite: default_suite(),
        }
    }
}

impl ImageBuildSpec {
    /// Checks the suite, every package name and the script.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_suite(&self.suite)?;
        if self.includes.len() > MAX_INCLUDES {
            return Err(bad(format!(
                "--include names {} packages; at most {MAX_INCLUDES}",
                self.includes.len()
            )));
        }
        for p in &self.includes {
            validate_package(p)?;
        }
        if let Some(s) = &self.script {
            if s.len() > MAX_SCRIPT_BYTES {
                return Err(bad(format!(
                    "the build script is {} bytes; at most {MAX_SCRIPT_BYTES}",
                    s.len()
                )));
            }
            if s.contains('\0') {
                return Err(bad("the build script is not text (it has a NUL byte)"));
            }
        }
        Ok(())
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

/// A suite banger can build.
pub fn validate_suite(suite: &str) -> Result<(), ApiError> {
    if SUITES.contains(&suite) {
        return Ok(());
    }
    Err(bad(format!(
        "unknown suite {suite:?}; use one of {}",
        SUITES.join(", ")
    )))
}

/// A Debian package name (Debian policy 5.6.1): lower-case letters,
/// digits, `+`, `-` and `.`, at least two characters, starting with a
/// letter or digit.
pub fn validate_package(name: &str) -> Result<(), ApiError> {
    let ok = (2..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        return Ok(());
    }
    Err(bad(format!(
        "{name:?} is not a Debian package name; use names such as jq or build-essential, separated by commas"
    )))
}

/// Splits `--include a,b c` into names (commas or spaces).
pub fn split_includes(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in ["jq", "build-essential", "g++", "libc6.1-dev", "0ad"] {
            assert!(validate_package(ok).is_ok(), "{ok}");
        }
        for no in [
            "", "j", "JQ", "-jq", "jq;rm", "jq=1.6", "../x", "a b", "--force", "jq\n",
        ] {
            let e = validate_package(no).unwrap_err();
            assert!(!e.message.contains('\n'), "{no:?}");
        }
    }

    #[test]
    fn suites_and_scripts_are_checked() {
        let mut s = ImageBuildSpec::default();
        assert_eq!(s.suite, "bookworm");
        assert!(s.validate().is_ok());
        s.suite = "sid".into();
        assert!(s
            .validate()
            .unwrap_err()
            .message
            .contains("bookworm, trixie"));
        s.suite = "trixie".into();
        s.includes = split_includes("jq, hello");
        assert_eq!(s.includes, ["jq", "hello"]);
        s.script = Some("#!/bin/sh\necho hi\n".into());
        assert!(s.validate().is_ok());
        s.script = Some("x".repeat(MAX_SCRIPT_BYTES + 1));
        assert!(s.validate().is_err());
    }

    #[test]
    fn an_older_client_request_reads_as_the_default() {
        let s: ImageBuildSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(s, ImageBuildSpec::default());
    }
}
