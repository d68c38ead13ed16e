//! What a VM restored from a template is told through its guest agent to
//! take its own identity: `banger-guest-init --restored`, with the config
//! drive's values in its environment and the secrets on its standard input.
//!
//! The guest applies it without mounting its config drive (which a restored
//! VM reads again only on a cold boot): under emulation every program
//! started costs a visible fraction of a second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::configdrive::Identity;
use crate::vmm::qga::AgentRun;

/// The program in the guest that applies a VM's identity.
pub const GUEST_INIT: &str = "/usr/local/sbin/banger-guest-init";

/// The way the restored guest is told its identity. An image records the
/// one its `banger-guest-init` speaks (`Manifest::restore_protocol`);
/// templates are made only of images that speak this one.
pub const PROTOCOL: u32 = 2;

/// The guest's `PATH` (the agent's environment is replaced, not extended).
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The run that gives a restored guest `identity`, the host's wall-clock
/// time `now` and 32 random bytes `seed` for its kernel RNG.
///
/// Arguments are visible to every process in the guest, so they carry
/// nothing; the environment (root's alone) carries the config drive's
/// values and the public keys; standard input carries the seed (a line of
/// hex) and then the private host key.
pub fn identity_run(identity: &Identity, now: SystemTime, seed: &[u8; 32]) -> AgentRun {
    let epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let mut env = vec![PATH.to_string()];
    env.extend(identity.vars().iter().map(|(k, v)| format!("{k}={v}")));
    env.push(format!(
        "BANGER_EPOCH={}.{:09}",
        epoch.as_secs(),
        epoch.subsec_nanos()
    ));
    env.push(format!(
        "BANGER_AUTHORIZED_KEYS={}",
        identity.authorized_key
    ));
    env.push(format!("BANGER_HOST_KEY_PUB={}", identity.host_key_public));
    let mut stdin: Vec<u8> = seed
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into();
    stdin.push(b'\n');
    stdin.extend_from_slice(identity.host_key_private.as_bytes());
    AgentRun {
        path: GUEST_INIT.to_string(),
        args: vec!["--restored".to_string()],
        env,
        stdin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_travel_on_stdin_and_nowhere_else() {
        let seed = [0xab; 32];
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let run = identity_run(&Identity::example(), now, &seed);
        assert_eq!(run.path, GUEST_INIT);
        assert_eq!(run.args, ["--restored"]);
        let stdin = String::from_utf8(run.stdin.clone()).unwrap();
        let (first, key) = stdin.split_once('\n').unwrap();
        assert_eq!(first, "ab".repeat(32));
        assert_eq!(key, Identity::example().host_key_private);
        let visible = format!("{:?}{:?}", run.args, run.env);
        assert!(!visible.contains("PRIVATE KEY"), "{visible}");
        assert!(!visible.contains(&"ab".repeat(32)), "{visible}");
    }

    #[test]
    fn the_environment_has_the_drive_values_the_time_and_the_public_keys() {
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let run = identity_run(&Identity::example(), now, &[0; 32]);
        for want in [
            "BANGER_HOSTNAME=dev",
            "BANGER_IP=10.0.0.2",
            "BANGER_MAC=02:00:00:00:00:01",
            "BANGER_PREFIX=24",
            "BANGER_GATEWAY=10.0.0.1",
            "BANGER_DNS=10.0.0.1",
            "BANGER_EPOCH=1700000000.000000005",
            "BANGER_AUTHORIZED_KEYS=ssh-ed25519 AAAA client\nssh-ed25519 BBBB extra\n",
            "BANGER_HOST_KEY_PUB=ssh-ed25519 CCCC dev.vm\n",
        ] {
            assert!(
                run.env.iter().any(|e| e == want),
                "{want:?} in {:?}",
                run.env
            );
        }
        assert!(run.env[0].starts_with("PATH=/"), "{:?}", run.env);
    }
}
