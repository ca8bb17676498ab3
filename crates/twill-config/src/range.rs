use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// The set of subnets a node may lease: `subnet_len`-sized blocks of `network`, from `min`
/// to `max` inclusive. One type serves both families; arithmetic is done on `u128` so the
/// allocator and the validator never need a v4 and a v6 copy of the same logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRange {
    pub network: IpNetwork,
    pub subnet_len: u8,
    /// Network address of the lowest subnet that may be leased.
    pub min: IpAddr,
    /// Network address of the highest subnet that may be leased.
    pub max: IpAddr,
}

pub fn addr_to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Inverse of [`addr_to_u128`]; `v4` picks the family.
pub fn addr_from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl SubnetRange {
    pub fn is_v4(&self) -> bool {
        self.network.is_ipv4()
    }

    fn bits(&self) -> u8 {
        if self.is_v4() {
            32
        } else {
            128
        }
    }

    /// Number of addresses in one subnet.
    pub fn subnet_size(&self) -> u128 {
        1u128 << (self.bits() - self.subnet_len)
    }

    /// How many subnets lie between `min` and `max`.
    pub fn count(&self) -> u128 {
        (addr_to_u128(self.max) - addr_to_u128(self.min)) / self.subnet_size() + 1
    }

    /// The `i`-th leasable subnet, counting from `min`.
    pub fn nth(&self, i: u128) -> IpNetwork {
        let start = addr_to_u128(self.min) + i * self.subnet_size();
        self.subnet_at(start)
    }

    /// The subnet of our length whose network address is `start`.
    pub fn subnet_at(&self, start: u128) -> IpNetwork {
        IpNetwork::new(addr_from_u128(start, self.is_v4()), self.subnet_len)
            .expect("subnet_len validated against the family")
    }

    /// True when `s` is exactly one of the leasable subnets (right length, aligned, in range).
    pub fn fits(&self, s: &IpNetwork) -> bool {
        if s.is_ipv4() != self.is_v4() || s.prefix() != self.subnet_len {
            return false;
        }
        let start = addr_to_u128(s.ip());
        start.is_multiple_of(self.subnet_size())
            && start >= addr_to_u128(self.min)
            && start <= addr_to_u128(self.max)
    }
}

/// First and last address of `n` (inclusive), for overlap checks between subnets of
/// different lengths.
pub fn interval(n: &IpNetwork) -> (u128, u128) {
    let bits: u32 = if n.is_ipv4() { 32 } else { 128 };
    let host_bits = bits - n.prefix() as u32;
    let hostmask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let start = addr_to_u128(n.network());
    (start, start | hostmask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(net: &str, len: u8, min: &str, max: &str) -> SubnetRange {
        SubnetRange {
            network: net.parse().unwrap(),
            subnet_len: len,
            min: min.parse().unwrap(),
            max: max.parse().unwrap(),
        }
    }

    #[test]
    fn counts_and_indexes_v4() {
        let range = r("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0");
        assert_eq!(range.count(), 255);
        assert_eq!(range.nth(0).to_string(), "10.244.1.0/24");
        assert_eq!(range.nth(254).to_string(), "10.244.255.0/24");
        assert!(range.fits(&"10.244.7.0/24".parse().unwrap()));
        assert!(
            !range.fits(&"10.244.0.0/24".parse().unwrap()),
            "below SubnetMin"
        );
        assert!(
            !range.fits(&"10.244.7.0/25".parse().unwrap()),
            "wrong length"
        );
        assert!(!range.fits(&"fd00::/64".parse().unwrap()), "wrong family");
    }

    #[test]
    fn counts_v6() {
        let range = r("fd00::/48", 64, "fd00:0:0:1::", "fd00:0:0:ffff::");
        assert_eq!(range.count(), 0xffff);
        assert_eq!(range.nth(1).to_string(), "fd00:0:0:2::/64");
    }

    #[test]
    fn interval_is_inclusive_and_handles_the_whole_space() {
        assert_eq!(interval(&"::/0".parse().unwrap()), (0, u128::MAX));
        let (s, e) = interval(&"10.244.3.0/24".parse().unwrap());
        assert_eq!(e - s, 255);
    }
}
