//! The per-VM config drive: a small read-only ext4 image the guest's
//! `banger-guest-init` mounts to learn its address, hostname and keys.

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
}

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
        // It holds the VM's private host key.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| GuestError::io(dest, e))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
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
}
