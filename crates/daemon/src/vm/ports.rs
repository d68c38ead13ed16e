//! Parsing `ss -H -tulnp` from a guest into `vm ports` rows.

use banger_api::PortInfo;

/// One row per (protocol, port), skipping sockets bound to loopback only
/// (nothing outside the guest reaches them).
pub fn parse_ss(out: &str, host: &str) -> Vec<PortInfo> {
    let mut rows: Vec<PortInfo> = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Netid State Recv-Q Send-Q Local Peer [Process]
        if f.len() < 5 {
            continue;
        }
        let proto = f[0];
        if proto != "tcp" && proto != "udp" {
            continue;
        }
        let Some((addr, port)) = f[4].rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr = addr.split('%').next().unwrap_or(addr);
        if addr.starts_with("127.") || addr == "::1" {
            continue;
        }
        let process = f.get(6).map(|p| process_name(p)).unwrap_or_default();
        if let Some(existing) = rows.iter_mut().find(|r| r.proto == proto && r.port == port) {
            if existing.process.is_empty() {
                existing.process = process;
            }
            continue;
        }
        rows.push(PortInfo {
            proto: proto.to_string(),
            port,
            endpoint: format!("{host}:{port}"),
            process,
        });
    }
    rows.sort_by(|a, b| (a.proto.as_str(), a.port).cmp(&(b.proto.as_str(), b.port)));
    rows
}

/// `users:(("sshd",pid=1,fd=3))` -> `sshd`.
fn process_name(field: &str) -> String {
    field
        .split('"')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_listeners_dedups_families_and_skips_loopback() {
        let out = "\
udp   UNCONN 0 0   0.0.0.0:68      0.0.0.0:*  users:((\"dhclient\",pid=9,fd=6))
tcp   LISTEN 0 128 0.0.0.0:22      0.0.0.0:*  users:((\"sshd\",pid=200,fd=3))
tcp   LISTEN 0 128 [::]:22         [::]:*     users:((\"sshd\",pid=200,fd=4))
tcp   LISTEN 0 511 127.0.0.1:6379  0.0.0.0:*  users:((\"redis\",pid=7,fd=6))
tcp   LISTEN 0 511 [fe80::1%eth0]:8080 [::]:*
";
        let rows = super::parse_ss(out, "dev.vm");
        let got: Vec<(String, u16, String, String)> = rows
            .into_iter()
            .map(|r| (r.proto, r.port, r.endpoint, r.process))
            .collect();
        assert_eq!(
            got,
            [
                ("tcp".into(), 22, "dev.vm:22".into(), "sshd".into()),
                ("tcp".into(), 8080, "dev.vm:8080".into(), String::new()),
                ("udp".into(), 68, "dev.vm:68".into(), "dhclient".into()),
            ]
        );
    }
}
