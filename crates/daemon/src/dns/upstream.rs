//! Upstream resolvers: the host's nameservers, never our own address.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Nameservers from a resolv.conf, minus `ours` (forwarding to ourselves
/// would loop).
pub fn from_resolv_conf(path: &Path, ours: &[IpAddr]) -> Vec<SocketAddr> {
    // A stray non-UTF-8 byte (a Latin-1 comment) must not lose the rest.
    let bytes = std::fs::read(path).unwrap_or_default();
    parse(&String::from_utf8_lossy(&bytes), ours)
}

fn parse(text: &str, ours: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ours.contains(ip) && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_non_utf8_byte_does_not_lose_the_nameservers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, b"# caf\xe9\nnameserver 192.0.2.53\n").unwrap();
        assert_eq!(
            super::from_resolv_conf(&path, &[]),
            ["192.0.2.53:53".parse::<std::net::SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn skips_ourselves_and_junk() {
        let ours = ["172.30.0.1".parse().unwrap()];
        let text = "# c\nnameserver 172.30.0.1\nnameserver 10.0.0.53\nnameserver bogus\nsearch vm\nnameserver ::1\n";
        let got: Vec<String> = super::parse(text, &ours)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.53:53", "[::1]:53"]);
    }
}
