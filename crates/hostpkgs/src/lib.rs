//! The Debian packages banger needs on its host, and the plan that installs
//! them: a pure function of what `apt-cache policy` reports, so every case
//! (a preinstalled backport, binNMUs beside an `all` package, a newer
//! security build, a package apt does not know) is a unit test on a recorded
//! report. `cargo xtask setup` carries a plan out; `banger doctor` prints it.

pub mod apt;
pub mod policy;
pub mod version;

use std::collections::BTreeMap;

pub use policy::Policy;

/// Packages that must be installed, at any version.
pub const BASE_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "e2fsprogs",
    "iproute2",
    "iptables",
    "openssh-client",
    "git",
    "jq",
    "cpio",
    "dnsutils",
    "util-linux",
    // reflink disks (and their test on an XFS loop device)
    "xfsprogs",
    // dm-snapshot disks, where the kernel has device-mapper
    "dmsetup",
];

/// QEMU packages banger needs. They come from one source package and must
/// be built from one source version (qemu-system-x86 depends on its exact
/// qemu-system-common; a backported qemu-utils breaks an older common).
pub const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "qemu-utils",
];

/// QEMU packages banger does not need but keeps in line with the others
/// when they are installed (they depend on the exact version too).
pub const QEMU_FOLLOWERS: &[&str] = &[
    "qemu-block-extra",
    "qemu-system-gui",
    "qemu-system-modules-opengl",
    "qemu-system-modules-spice",
];

/// The package whose version the QEMU set follows.
const QEMU_ANCHOR: &str = "qemu-system-x86";

/// Every package name to ask apt about.
pub fn query_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    names.extend_from_slice(QEMU_PACKAGES);
    names.extend_from_slice(QEMU_FOLLOWERS);
    names.extend_from_slice(BASE_PACKAGES);
    names
}

/// What happens to one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Installed as needed: nothing to do.
    Keep,
    Install,
    Upgrade,
    Downgrade,
}

/// One package of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub package: String,
    pub installed: Option<String>,
    /// The exact version to install; `None` lets apt take its candidate.
    pub pin: Option<String>,
    pub action: Action,
}

impl Step {
    /// `pkg=version` when pinned, else `pkg`: an `apt-get install` argument.
    pub fn request(&self) -> String {
        match &self.pin {
            Some(v) => format!("{}={v}", self.package),
            None => self.package.clone(),
        }
    }

    /// One line for a person: what is wrong and what the plan does.
    pub fn describe(&self) -> String {
        let target = self.pin.as_deref().unwrap_or("apt's candidate");
        match (self.action, &self.installed) {
            (Action::Keep, Some(v)) => format!("{} {v} installed", self.package),
            (Action::Install, _) | (_, None) => {
                format!("{} is missing; install {target}", self.package)
            }
            (action, Some(v)) => format!(
                "{} {v} does not match the QEMU set; {} to {target}",
                self.package,
                if action == Action::Downgrade {
                    "downgrade"
                } else {
                    "upgrade"
                }
            ),
        }
    }
}

/// The whole plan: every needed package, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// The steps that change something.
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.action != Action::Keep)
    }

    pub fn is_satisfied(&self) -> bool {
        self.changes().next().is_none()
    }

    fn downgrades(&self) -> bool {
        self.changes().any(|s| s.action == Action::Downgrade)
    }

    /// The `apt-get` arguments that carry the plan out: only the packages
    /// that change, `--allow-downgrades` only when one goes down.
    pub fn install_args(&self) -> Vec<String> {
        let mut args = vec![
            "install".to_string(),
            "-y".into(),
            "-q".into(),
            "--no-install-recommends".into(),
        ];
        if self.downgrades() {
            args.push("--allow-downgrades".into());
        }
        args.extend(self.changes().map(Step::request));
        args
    }

    /// The `apt-get` arguments that simulate installing every package of
    /// the plan with its pins (see [`fresh_plan`] for the plan a fresh
    /// machine would carry out).
    pub fn simulate_args(&self) -> Vec<String> {
        let mut args = vec![
            "install".to_string(),
            "--simulate".into(),
            "-q".into(),
            "--no-install-recommends".into(),
            "--allow-downgrades".into(),
        ];
        args.extend(self.steps.iter().map(Step::request));
        args
    }

    /// The one command a person runs to fix this host.
    pub fn fix_command(&self) -> String {
        format!(
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get {}",
            self.install_args().join(" ")
        )
    }
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("package {} not in apt's package lists; run `apt-get update` and check that Debian 12 main is in /etc/apt/sources.list.d", .0.join(", "))]
    Unknown(Vec<String>),
    #[error("apt knows {0} but offers no version of it to install; check /etc/apt/sources.list.d and run `apt-get update`")]
    NoCandidate(String),
    #[error("{package} has no installable version built from QEMU {wanted}, the version qemu-system-x86 needs; run `apt-get update`")]
    QemuMismatch { package: String, wanted: String },
}

/// Makes the plan from apt's report on [`query_names`].
pub fn plan(policies: &BTreeMap<String, Policy>) -> Result<Plan, PlanError> {
    let unknown: Vec<String> = QEMU_PACKAGES
        .iter()
        .chain(BASE_PACKAGES)
        .filter(|p| !policies.contains_key(**p))
        .map(|p| p.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(PlanError::Unknown(unknown));
    }
    let mut steps = qemu_steps(policies)?;
    for name in BASE_PACKAGES {
        steps.push(base_step(name, &policies[*name])?);
    }
    Ok(Plan { steps })
}

/// The plan a machine with none of these packages installed would carry
/// out, from this machine's package lists: what `cargo xtask test`
/// simulates on every run, so a pin that apt cannot satisfy fails CI even
/// where everything is already installed.
pub fn fresh_plan(policies: &BTreeMap<String, Policy>) -> Result<Plan, PlanError> {
    let fresh: BTreeMap<String, Policy> = policies
        .iter()
        .map(|(name, p)| {
            let mut p = p.clone();
            p.installed = None;
            p.versions.retain(|e| e.downloadable());
            let offered = |c: &String| p.versions.iter().any(|e| &e.version == c);
            p.candidate = p.candidate.clone().filter(offered).or_else(|| {
                p.versions
                    .iter()
                    .max_by(|a, b| {
                        a.priority
                            .cmp(&b.priority)
                            .then_with(|| version::compare(&a.version, &b.version))
                    })
                    .map(|e| e.version.clone())
            });
            (name.clone(), p)
        })
        .collect();
    plan(&fresh)
}

/// A package needed at any version: kept if installed, else apt's candidate.
fn base_step(name: &str, policy: &Policy) -> Result<Step, PlanError> {
    let action = match (&policy.installed, &policy.candidate) {
        (Some(_), _) => Action::Keep,
        (None, Some(_)) => Action::Install,
        (None, None) => return Err(PlanError::NoCandidate(name.to_string())),
    };
    Ok(Step {
        package: name.to_string(),
        installed: policy.installed.clone(),
        pin: None,
        action,
    })
}

/// The QEMU set, all pinned to versions of one source version: the
/// installed qemu-system-x86's when the rest can follow it (no change on a
/// working host), else apt's candidate for qemu-system-x86.
fn qemu_steps(policies: &BTreeMap<String, Policy>) -> Result<Vec<Step>, PlanError> {
    let anchor = &policies[QEMU_ANCHOR];
    let members: Vec<&str> = QEMU_PACKAGES
        .iter()
        .copied()
        .chain(
            QEMU_FOLLOWERS
                .iter()
                .copied()
                .filter(|p| policies.get(*p).is_some_and(|pol| pol.installed.is_some())),
        )
        .collect();
    let mut sources: Vec<&str> = Vec::new();
    if let Some(v) = &anchor.installed {
        sources.push(version::source_of(v));
    }
    match &anchor.candidate {
        Some(v) => sources.push(version::source_of(v)),
        None if sources.is_empty() => return Err(PlanError::NoCandidate(QEMU_ANCHOR.to_string())),
        None => {}
    }
    let mut last_error = None;
    for source in sources {
        match members
            .iter()
            .map(|m| qemu_step(m, &policies[*m], source))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(steps) => return Ok(steps),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| PlanError::NoCandidate(QEMU_ANCHOR.to_string())))
}

/// One QEMU package at the newest version built from `source`: the
/// installed one when it matches, else the newest an archive offers.
fn qemu_step(name: &str, policy: &Policy, source: &str) -> Result<Step, PlanError> {
    let installed = policy.installed.clone();
    if let Some(v) = installed
        .as_deref()
        .filter(|v| version::source_of(v) == source)
    {
        return Ok(Step {
            package: name.to_string(),
            pin: Some(v.to_string()),
            installed,
            action: Action::Keep,
        });
    }
    let target = policy
        .versions
        .iter()
        .filter(|e| e.downloadable() && version::source_of(&e.version) == source)
        .map(|e| e.version.as_str())
        .max_by(|a, b| version::compare(a, b))
        .ok_or_else(|| PlanError::QemuMismatch {
            package: name.to_string(),
            wanted: source.to_string(),
        })?;
    let action = match installed.as_deref() {
        None => Action::Install,
        Some(v) if version::compare(v, target).is_gt() => Action::Downgrade,
        Some(_) => Action::Upgrade,
    };
    Ok(Step {
        package: name.to_string(),
        installed,
        pin: Some(target.to_string()),
        action,
    })
}
