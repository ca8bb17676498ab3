use std::fmt;
use std::str::FromStr;

/// An Ethernet address, printed and parsed the way flannel stores `VtepMAC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Random, unicast, locally administered: never collides with a vendor address.
    pub fn random() -> Self {
        let mut b: [u8; 6] = rand::random();
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }

    pub fn from_slice(s: &[u8]) -> Option<Self> {
        s.try_into().ok().map(Mac)
    }

    /// An address one station can own: not group (multicast/broadcast), not all zeros.
    /// An FDB entry for anything else would flood or blackhole the VXLAN device.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("not a MAC address: {s:?}"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            b[i] = u8::from_str_radix(p, 16).map_err(|_| format!("not a MAC address: {s:?}"))?;
        }
        Ok(Mac(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_local_unicast_and_round_trips() {
        for _ in 0..100 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 0x03, 0x02);
            assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        }
        assert!("aa:bb".parse::<Mac>().is_err());
        assert!("zz:bb:cc:dd:ee:ff".parse::<Mac>().is_err());
    }
}
