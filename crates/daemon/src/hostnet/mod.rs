//! Host networking: the bridge, one tap per VM, and the address plan that
//! maps a slot to an IP, a MAC and a tap name.

pub mod bridge;
pub mod plan;
pub mod tap;

pub use plan::{Subnet, SubnetPlan};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error("invalid subnet {0:?}: use an IPv4 CIDR such as 172.30.0.0/24 (prefix 16-29)")]
    BadSubnet(String),
}
