//! Parses `apt-cache policy PKG...`: what is installed, apt's candidate, and
//! every version the package lists offer.

use std::collections::BTreeMap;

/// What apt reports about one package.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// The installed version, if any.
    pub installed: Option<String>,
    /// The version `apt-get install PKG` would pick, if any.
    pub candidate: Option<String>,
    /// Every version apt knows, highest first, with where it comes from.
    pub versions: Vec<VersionEntry>,
}

/// One row of a policy's version table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub version: String,
    /// apt's pin priority for this version (500 for a normal archive, 100
    /// for dpkg's status or a not-automatic one such as backports).
    pub priority: i32,
    /// Archive lines (`http://... bookworm/main amd64 Packages`) or
    /// `/var/lib/dpkg/status` for an installed version.
    pub origins: Vec<String>,
}

impl VersionEntry {
    /// True when a package archive offers this version (not only dpkg's
    /// status file, which cannot be installed from).
    pub fn downloadable(&self) -> bool {
        self.origins
            .iter()
            .any(|o| !o.ends_with("/var/lib/dpkg/status"))
    }
}

impl Policy {
    /// The version-table entry for exactly `version`.
    pub fn entry(&self, version: &str) -> Option<&VersionEntry> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// Parses the output of one `apt-cache policy` call over several packages.
/// Packages apt does not know are simply absent from the result, as they are
/// from apt's output.
pub fn parse(text: &str) -> BTreeMap<String, Policy> {
    let mut all = BTreeMap::new();
    let mut current: Option<(String, Policy)> = None;
    let mut in_table = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            if let Some(name) = line.strip_suffix(':') {
                if let Some((n, p)) = current.take() {
                    all.insert(n, p);
                }
                current = Some((name.to_string(), Policy::default()));
                in_table = false;
            }
            continue;
        }
        let Some((_, policy)) = current.as_mut() else {
            continue;
        };
        let trimmed = line.trim();
        if let Some(v) = trimmed.strip_prefix("Installed: ") {
            policy.installed = version_or_none(v);
        } else if let Some(v) = trimmed.strip_prefix("Candidate: ") {
            policy.candidate = version_or_none(v);
        } else if trimmed == "Version table:" {
            in_table = true;
        } else if in_table {
            table_line(policy, line);
        }
    }
    if let Some((n, p)) = current {
        all.insert(n, p);
    }
    all
}

fn version_or_none(v: &str) -> Option<String> {
    let v = v.trim();
    (v != "(none)" && !v.is_empty()).then(|| v.to_string())
}

/// A version line is indented five columns (` *** ` marks the installed
/// one); its origins follow, indented eight.
fn table_line(policy: &mut Policy, line: &str) {
    let indent = line.len() - line.trim_start().len();
    let trimmed = line.trim().trim_start_matches("*** ");
    if indent < 8 || line.starts_with(" *** ") {
        let mut words = trimmed.split_whitespace();
        if let Some(version) = words.next() {
            policy.versions.push(VersionEntry {
                version: version.to_string(),
                priority: words.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                origins: Vec::new(),
            });
        }
    } else if let Some(last) = policy.versions.last_mut() {
        // "500 http://deb.debian.org/debian bookworm/main amd64 Packages"
        let origin = trimmed
            .split_once(' ')
            .map(|(_, rest)| rest)
            .unwrap_or(trimmed);
        last.origins.push(origin.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
mmdebstrap:
  Installed: (none)
  Candidate: 1.3.5-7
  Version table:
     1.3.5-7 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
";

    #[test]
    fn reads_installed_candidate_and_table() {
        let all = parse(SAMPLE);
        let q = &all["qemu-utils"];
        assert_eq!(
            q.installed.as_deref(),
            Some("1:10.0.2+ds-2+deb13u1~bpo12+1")
        );
        assert_eq!(q.versions.len(), 2);
        assert_eq!((q.versions[0].priority, q.versions[1].priority), (100, 500));
        assert!(
            !q.versions[0].downloadable(),
            "the backport is only in dpkg's status"
        );
        assert!(q.versions[1].downloadable());
        assert_eq!(
            q.versions[1].origins,
            ["http://deb.debian.org/debian bookworm/main amd64 Packages"]
        );
        let m = &all["mmdebstrap"];
        assert_eq!(m.installed, None);
        assert_eq!(m.candidate.as_deref(), Some("1.3.5-7"));
    }

    #[test]
    fn unknown_packages_are_absent() {
        assert!(parse("").is_empty());
        assert!(!parse(SAMPLE).contains_key("iptables"));
    }
}
