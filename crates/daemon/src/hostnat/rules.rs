//! The iptables rules banger writes, as data, and parsing of `iptables -S`.

use super::{tag, GUARD_TAG, ISOLATE_TAG};

/// One rule: table, chain, match and target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
    /// Insert at the top (accepts) rather than append (the drop).
    pub insert: bool,
}

impl Rule {
    /// Full argument vector for `verb` (`-A`, `-I`, `-C`, `-D`).
    pub fn args(&self, verb: &str) -> Vec<String> {
        let mut a = vec![
            "-t".to_string(),
            self.table.to_string(),
            verb.to_string(),
            self.chain.to_string(),
        ];
        a.extend(self.spec.iter().cloned());
        a
    }

    pub fn add_verb(&self) -> &'static str {
        if self.insert {
            "-I"
        } else {
            "-A"
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The rules that give `vm` (at `ip`) NAT to the outside.
pub fn for_vm(vm: &str, ip: &str, bridge: &str) -> Vec<Rule> {
    let src = format!("{ip}/32");
    let tag = tag(vm);
    vec![
        Rule {
            table: "nat",
            chain: "POSTROUTING",
            spec: strings(&[
                "-s",
                &src,
                "!",
                "-o",
                bridge,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "MASQUERADE",
            ]),
            insert: false,
        },
        Rule {
            table: "filter",
            chain: "FORWARD",
            spec: strings(&[
                "-s",
                &src,
                "-i",
                bridge,
                "!",
                "-o",
                bridge,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ]),
            insert: true,
        },
        Rule {
            table: "filter",
            chain: "FORWARD",
            spec: strings(&[
                "-d",
                &src,
                "!",
                "-i",
                bridge,
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ]),
            insert: true,
        },
    ]
}

/// Drops anything from the bridge to elsewhere that no VM rule accepted.
pub fn isolation(bridge: &str) -> Rule {
    Rule {
        table: "filter",
        chain: "FORWARD",
        spec: strings(&[
            "-i",
            bridge,
            "!",
            "-o",
            bridge,
            "-m",
            "comment",
            "--comment",
            ISOLATE_TAG,
            "-j",
            "DROP",
        ]),
        insert: false,
    }
}

/// The chain that holds what guests may reach of the host itself.
pub fn guard_chain(bridge: &str) -> String {
    format!("BANGER-IN-{bridge}")
}

/// The jump from INPUT into the guard chain for packets from the bridge,
/// first in INPUT so no host rule can open more before it.
pub fn guard_jump(bridge: &str) -> Rule {
    Rule {
        table: "filter",
        chain: "INPUT",
        spec: strings(&[
            "-i",
            bridge,
            "-m",
            "comment",
            "--comment",
            GUARD_TAG,
            "-j",
            &guard_chain(bridge),
        ]),
        insert: true,
    }
}

/// The guard chain's rules, in order: replies to connections the host
/// made (SSH to guests), DNS on `dns_port` (when served), nothing else.
pub fn guard_rules(dns_port: u16) -> Vec<Vec<String>> {
    let mut rules = vec![strings(&[
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ])];
    if dns_port != 0 {
        let port = dns_port.to_string();
        for proto in ["udp", "tcp"] {
            rules.push(strings(&["-p", proto, "--dport", &port, "-j", "ACCEPT"]));
        }
    }
    rules.push(strings(&["-j", "DROP"]));
    rules
}

/// Splits an `iptables -S` line into arguments, honouring double quotes.
pub fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The VM a rule line belongs to, if it carries a per-VM banger tag.
pub fn vm_of(line: &str) -> Option<String> {
    let args = split_rule(line);
    let i = args.iter().position(|a| a == "--comment")?;
    let name = args.get(i + 1)?.strip_prefix("banger:")?;
    // `isolate` is a valid VM name, so its rules carry ISOLATE_TAG too: the
    // bridge-wide rule is told apart as the one that drops (a VM's accept).
    let drops = args.windows(2).any(|w| w[0] == "-j" && w[1] == "DROP");
    (!(name == "isolate" && drops) && banger_api::validate_vm_name(name).is_ok())
        .then(|| name.to_string())
}
