//! The address plan: the bridge takes the subnet's first address, slot N
//! gets the address N+1 after the network address, a MAC and a tap name.

use std::net::Ipv4Addr;
use std::str::FromStr;

use super::NetError;
use crate::store::AddressPlan;

/// Every tap banger creates starts with this; reconciliation relies on it.
pub const TAP_PREFIX: &str = "banger-tap";

/// An IPv4 subnet in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadSubnet(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }
    /// The bridge's address, which is also the guests' gateway and DNS server.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }
    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }
}

/// The plan the store uses to hand out addresses.
#[derive(Debug, Clone, Copy)]
pub struct SubnetPlan {
    pub subnet: Subnet,
}

impl AddressPlan for SubnetPlan {
    fn max_slot(&self) -> u32 {
        // Network address, gateway and broadcast are not for guests; slot
        // numbers also name taps, which have room for four digits.
        (self.subnet.size() - 3).min(9999)
    }
    fn ip(&self, slot: u32) -> String {
        self.subnet.nth(slot + 1).to_string()
    }
    fn mac(&self, slot: u32) -> String {
        // Locally administered, unicast; the slot in the low 24 bits.
        format!(
            "02:62:67:{:02x}:{:02x}:{:02x}",
            (slot >> 16) & 0xff,
            (slot >> 8) & 0xff,
            slot & 0xff
        )
    }
    fn tap(&self, slot: u32) -> String {
        format!("{TAP_PREFIX}{slot}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_maps_slots_to_distinct_addresses_inside_the_subnet() {
        let plan = SubnetPlan {
            subnet: "172.30.0.7/24".parse().unwrap(),
        };
        assert_eq!(plan.subnet.to_string(), "172.30.0.0/24");
        assert_eq!(plan.subnet.gateway().to_string(), "172.30.0.1");
        assert_eq!(plan.ip(1), "172.30.0.2");
        assert_eq!(plan.max_slot(), 253);
        assert_eq!(plan.ip(plan.max_slot()), "172.30.0.254");
        assert_eq!(plan.mac(258), "02:62:67:00:01:02");
        assert!(plan.tap(9999).len() <= 15);
    }

    #[test]
    fn bad_subnets_are_refused() {
        for s in ["172.30.0.0", "172.30.0.0/8", "x/24", "172.30.0.0/30"] {
            assert!(s.parse::<Subnet>().is_err(), "{s}");
        }
    }
}
