//! The fake iptables: rules in memory, answering as the real one does.

use super::{failed, World};
use crate::cmd::CmdError;
use crate::hostnat::Iptables;

/// iptables with the rules in memory, answering `-C`, `-A`, `-I`, `-D` and
/// `-S` as the real one does. Checks (`-C`) are never fault points: only
/// changes and listings are.
#[derive(Clone, Default)]
pub struct FakeIptables(pub World);

impl FakeIptables {
    fn render(args: &[String]) -> String {
        args.iter()
            .map(|a| {
                if a.contains(' ') || a.contains(':') {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// How many rules contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0
            .rules()
            .iter()
            .filter(|(_, r)| r.contains(needle))
            .count()
    }

    pub fn push_rule(&self, table: &str, line: &str) {
        self.0
            .state()
            .rules
            .push((table.to_string(), line.to_string()));
    }
}

impl Iptables for FakeIptables {
    fn run(&self, args: &[String]) -> Result<String, CmdError> {
        let table = args[1].clone();
        let verb = args[2].as_str();
        let chain = args[3].clone();
        if verb != "-C" {
            self.0
                .hit(&format!("nat.iptables {verb}"))
                .map_err(failed)?;
        }
        let line = format!("-A {chain} {}", Self::render(&args[4..]));
        let mut st = self.0.state();
        let pos = st.rules.iter().position(|(t, r)| *t == table && *r == line);
        let bad = || failed("Bad rule (does a matching rule exist in that chain?)".into());
        match verb {
            "-C" => pos.map(|_| String::new()).ok_or_else(bad),
            "-A" => {
                st.rules.push((table, line));
                Ok(String::new())
            }
            "-I" => {
                st.rules.insert(0, (table, line));
                Ok(String::new())
            }
            "-D" => {
                st.rules.remove(pos.ok_or_else(bad)?);
                Ok(String::new())
            }
            "-N" => Ok(String::new()),
            "-F" => {
                st.rules
                    .retain(|(t, r)| !(*t == table && r.starts_with(&format!("-A {chain} "))));
                Ok(String::new())
            }
            "-S" => Ok(st
                .rules
                .iter()
                .filter(|(t, r)| *t == table && r.starts_with(&format!("-A {chain} ")))
                .map(|(_, r)| format!("{r}\n"))
                .collect()),
            _ => Err(bad()),
        }
    }

    fn enable_forwarding(&self) {}
}
