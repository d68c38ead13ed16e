//! The per-VM config drive: a small read-only ext4 image the guest's
//! `banger-guest-init` mounts to learn its address, hostname and keys, with
//! the same identity also as plain text in the filesystem's first 1 KiB
//! (which ext4 leaves unused), which the images' script reads with shell
//! builtins instead of mounting: under emulation `mount` and `umount` are
//! a visible part of a cold boot. Older images mount, and a drive whose
//! identity does not fit has no text.

use crate::pathio::FromPathIo;
use std::path::Path;

use super::GuestError;

/// A VM's identity, as the guest applies it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub hostname: String,
    /// Empty for a template, which has no address of its own.
    pub ip: String,
    pub mac: String,
    pub prefix: u8,
    pub gateway: String,
    pub dns: String,
    pub authorized_key: String,
    pub host_key_private: String,
    pub host_key_public: String,
}

impl Identity {
    /// The variables of `identity.env`, as `banger-guest-init` names them.
    pub fn vars(&self) -> [(&'static str, String); 6] {
        [
            ("BANGER_HOSTNAME", self.hostname.clone()),
            ("BANGER_IP", self.ip.clone()),
            ("BANGER_MAC", self.mac.clone()),
            ("BANGER_PREFIX", self.prefix.to_string()),
            ("BANGER_GATEWAY", self.gateway.clone()),
            ("BANGER_DNS", self.dns.clone()),
        ]
    }

    /// The shell-sourced environment file. Every value is a validated name
    /// or an address, so none needs quoting; each is quoted anyway.
    fn env_file(&self) -> String {
        self.vars()
            .iter()
            .map(|(k, v)| format!("{k}='{v}'\n"))
            .collect()
    }

    /// The identity as `banger-guest-init` reads it from the drive's first
    /// bytes: a magic line, then one line per value or key line, each
    /// tagged (`E NAME=VALUE`, `A` authorized key, `P` public host key,
    /// `K` private host key), then `end`. When that does not fit in
    /// [`RAW_MAX`] bytes, or a value holds a line break, only the line
    /// [`RAW_NONE`]: the guest then mounts the drive (the line ends its
    /// `read` at once, where the filesystem's bytes would be read up to
    /// their first line break).
    fn raw_text(&self) -> String {
        self.full_raw_text()
            .filter(|t| t.len() <= RAW_MAX)
            .unwrap_or_else(|| format!("{RAW_NONE}\n"))
    }

    fn full_raw_text(&self) -> Option<String> {
        let mut text = format!("{RAW_MAGIC}\n");
        for (k, v) in self.vars() {
            if v.contains('\n') {
                return None;
            }
            text.push_str(&format!("E {k}={v}\n"));
        }
        for (tag, body) in [
            ("A", &self.authorized_key),
            ("P", &self.host_key_public),
            ("K", &self.host_key_private),
        ] {
            for line in body.lines() {
                text.push_str(&format!("{tag} {line}\n"));
            }
        }
        text.push_str("end\n");
        Some(text)
    }
}

/// The first line of the identity as text (see [`Identity::raw_text`]).
pub const RAW_MAGIC: &str = "banger-identity 1";
/// The first line of a drive whose identity is only in its files.
pub const RAW_NONE: &str = "banger-identity mount";
/// The bytes before an ext4 filesystem's superblock.
pub const RAW_MAX: usize = 1024;

#[cfg(test)]
impl Identity {
    /// A VM `dev` at 10.0.0.2/24 with two authorized keys, for tests.
    pub fn example() -> Self {
        Identity {
            hostname: "dev".into(),
            ip: "10.0.0.2".into(),
            mac: "02:00:00:00:00:01".into(),
            prefix: 24,
            gateway: "10.0.0.1".into(),
            dns: "10.0.0.1".into(),
            authorized_key: "ssh-ed25519 AAAA client\nssh-ed25519 BBBB extra\n".into(),
            host_key_private:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nKEY\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            host_key_public: "ssh-ed25519 CCCC dev.vm\n".into(),
        }
    }
}

/// Builds the config drive image at `dest` (replacing it), mode 0600.
pub fn build(identity: &Identity, dest: &Path) -> Result<(), GuestError> {
    let staging = tempdir_beside(dest)?;
    let write = |name: &str, body: &str, mode: u32| -> Result<(), GuestError> {
        use std::os::unix::fs::PermissionsExt;
        let p = staging.join(name);
        std::fs::write(&p, body).map_err(|e| GuestError::io(&p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| GuestError::io(&p, e))
    };
    let result = (|| {
        write("identity.env", &identity.env_file(), 0o644)?;
        write("authorized_keys", &identity.authorized_key, 0o644)?;
        write("ssh_host_ed25519_key", &identity.host_key_private, 0o600)?;
        write("ssh_host_ed25519_key.pub", &identity.host_key_public, 0o644)?;
        crate::ext4::make(&staging, dest, "banger-config", "1M", &[])?;
        write_at_start(dest, identity.raw_text().as_bytes())?;
        // It holds the VM's private host key.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| GuestError::io(dest, e))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Overwrites the first bytes of `dest` (the filesystem's boot block).
fn write_at_start(dest: &Path, bytes: &[u8]) -> Result<(), GuestError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(|e| GuestError::io(dest, e))?;
    f.write_all(bytes).map_err(|e| GuestError::io(dest, e))
}

fn tempdir_beside(dest: &Path) -> Result<std::path::PathBuf, GuestError> {
    let dir = dest.with_extension("staging");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| GuestError::io(&dir, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_drive_holding_the_private_key_is_private() {
        if crate::cmd::which("mkfs.ext4").is_none() {
            eprintln!("skipped: mkfs.ext4 is not installed (e2fsprogs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("config.img");
        std::fs::write(&dest, "old").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
        let identity = Identity::example();
        build(&identity, &dest).unwrap();
        assert_eq!(
            identity.env_file(),
            "BANGER_HOSTNAME='dev'\nBANGER_IP='10.0.0.2'\nBANGER_MAC='02:00:00:00:00:01'\n\
             BANGER_PREFIX='24'\nBANGER_GATEWAY='10.0.0.1'\nBANGER_DNS='10.0.0.1'\n"
        );
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            !dir.path().join("config.staging").exists(),
            "staging left behind"
        );
    }

    fn have(tool: &str) -> bool {
        let there = crate::cmd::which(tool).is_some();
        if !there {
            eprintln!("skipped: {tool} is not installed (e2fsprogs)");
        }
        there
    }

    /// `debugfs -R "cat FILE"` of the drive's filesystem.
    fn file_in(drive: &Path, file: &str) -> String {
        let request = format!("cat {file}");
        let args: [&std::ffi::OsStr; 4] = [
            "-R".as_ref(),
            request.as_ref(),
            "--".as_ref(),
            drive.as_os_str(),
        ];
        String::from_utf8(crate::cmd::output("debugfs", &args).unwrap().stdout).unwrap()
    }

    #[test]
    fn the_drive_carries_its_identity_as_text_and_as_a_filesystem() {
        if !have("mkfs.ext4") || !have("debugfs") || !have("e2fsck") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("config.img");
        let identity = Identity::example();
        build(&identity, &dest).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        let text = identity.raw_text();
        assert!(
            text.starts_with(&format!("{RAW_MAGIC}\nE BANGER_HOSTNAME=dev\n")),
            "{text}"
        );
        assert!(text.contains("\nA ssh-ed25519 BBBB extra\n"), "{text}");
        assert!(
            text.contains("\nK -----END OPENSSH PRIVATE KEY-----\nend\n"),
            "{text}"
        );
        assert_eq!(&bytes[..text.len()], text.as_bytes());
        // Older images mount it: the filesystem is whole, its files there.
        let args: [&std::ffi::OsStr; 3] = ["-fn".as_ref(), "--".as_ref(), dest.as_os_str()];
        crate::cmd::output("e2fsck", &args).expect("e2fsck finds the filesystem clean");
        assert_eq!(file_in(&dest, "authorized_keys"), identity.authorized_key);
        assert_eq!(file_in(&dest, "identity.env"), identity.env_file());
    }

    #[test]
    fn an_identity_too_long_for_text_is_only_in_the_files() {
        if !have("mkfs.ext4") || !have("debugfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("config.img");
        let mut identity = Identity::example();
        identity.authorized_key = "ssh-ed25519 AAAA key\n".repeat(60);
        build(&identity, &dest).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        let none = format!("{RAW_NONE}\n");
        assert_eq!(&bytes[..none.len()], none.as_bytes());
        assert_eq!(file_in(&dest, "authorized_keys"), identity.authorized_key);
    }

    /// `read_identity` of the image's `banger-guest-init`, run by `sh` on
    /// `input`; prints what it read.
    fn guest_reads(input: &[u8]) -> (bool, String) {
        let script = include_str!("../image/assets/banger-guest-init");
        let start = script.find("read_identity() {").unwrap();
        let end = start + script[start..].find("\n}\n").unwrap() + 3;
        let program = format!(
            "{}\nif read_identity; then ok=yes; else ok=no; fi\n\
             printf '%s|%s|%s|%s|%s|%s|%s\\n' \"$ok\" \"${{BANGER_HOSTNAME:-}}\" \"${{BANGER_IP:-}}\" \"${{BANGER_MAC:-}}\" \"${{BANGER_PREFIX:-}}${{BANGER_GATEWAY:-}}${{BANGER_DNS:-}}\" \"${{AUTHORIZED:-}}${{HOST_PUB:-}}\" \"${{HOST_KEY:-}}\"",
            &script[start..end]
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &program])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        (text.starts_with("yes|"), text)
    }

    #[test]
    fn the_guest_reads_the_text_back_as_it_was_written() {
        let identity = Identity::example();
        let mut drive = identity.raw_text().into_bytes();
        drive.resize(4096, 0);
        let (ok, seen) = guest_reads(&drive);
        assert!(ok, "{seen}");
        assert_eq!(
            seen,
            format!(
                "yes|dev|10.0.0.2|02:00:00:00:00:01|2410.0.0.110.0.0.1|{}{}|{}\n",
                identity.authorized_key, identity.host_key_public, identity.host_key_private
            )
        );
        // No text, a cut text, another text: the guest mounts instead.
        for input in [
            format!("{RAW_NONE}\n").into_bytes(),
            identity.raw_text().replace("end\n", "").into_bytes(),
            b"\0\0\0\0".to_vec(),
            identity
                .raw_text()
                .replace("E BANGER_IP", "X BANGER_IP")
                .into_bytes(),
            identity
                .raw_text()
                .replace("E BANGER_DNS=10.0.0.1\n", "")
                .into_bytes(),
        ] {
            let (ok, seen) = guest_reads(&input);
            assert!(!ok, "{seen}");
        }
    }
}
