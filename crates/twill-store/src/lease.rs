use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A JSON value kept as the text it arrived as. One small allocation per lease where a
/// parsed `Value` map cost ~700 bytes (7 MB of a node's memory at 10 000 peers), and data
/// from another backend round-trips byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// `None` unless `text` is one valid JSON value.
    pub fn parse(text: &str) -> Option<RawJson> {
        RawValue::from_string(text.trim().to_string())
            .ok()
            .map(RawJson)
    }

    pub fn of<T: Serialize>(v: &T) -> RawJson {
        RawJson(serde_json::value::to_raw_value(v).expect("serializable"))
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

/// Equal when the text is: a writer that formats differently shows up as a change,
/// which only re-programs the same entries.
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// The lease value flannel stores, field for field. `BackendData` stays raw JSON so a
/// lease written by another backend round-trips untouched. Read as flanneld reads it (Go's
/// decoder): a key matches its field exactly or else ignoring case, so `publicIP` or
/// `backendData` written by hand count as flanneld would count them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flannel writes `null` here rather than omitting it; so do we.
    #[serde(rename = "PublicIPv6")]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", skip_serializing_if = "str::is_empty")]
    pub backend_type: Cow<'static, str>,
    #[serde(rename = "BackendData", skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<RawJson>,
    #[serde(rename = "BackendV6Data", skip_serializing_if = "Option::is_none")]
    pub backend_v6_data: Option<RawJson>,
}

/// A JSON object's members by name, looked up as Go's encoding/json matches struct fields:
/// the exact key first, else the first key equal to it ignoring ASCII case.
struct GoObject(Vec<(String, Box<RawValue>)>);

impl GoObject {
    fn read<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let members = std::collections::BTreeMap::<String, Box<RawValue>>::deserialize(d)?;
        Ok(GoObject(members.into_iter().collect()))
    }

    fn get(&self, name: &str) -> Option<&RawValue> {
        let exact = self.0.iter().find(|(k, _)| k == name);
        exact
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.as_ref())
            .filter(|v| v.get() != "null")
    }

    /// The member `name` parsed as `T`; `None` when absent or null.
    fn field<T: serde::de::DeserializeOwned, E: serde::de::Error>(
        &self,
        name: &str,
    ) -> Result<Option<T>, E> {
        self.get(name)
            .map(|v| serde_json::from_str(v.get()).map_err(|e| E::custom(format!("{name}: {e}"))))
            .transpose()
    }
}

impl<'de> Deserialize<'de> for LeaseAttrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let o = GoObject::read(d)?;
        let raw = |name: &str| {
            o.get(name)
                .map(|v| RawJson(RawValue::from_string(v.get().to_string()).expect("valid JSON")))
        };
        Ok(LeaseAttrs {
            public_ip: o
                .field("PublicIP")?
                .ok_or_else(|| D::Error::missing_field("PublicIP"))?,
            public_ipv6: o.field("PublicIPv6")?,
            backend_type: o
                .field::<String, _>("BackendType")?
                .map(|t| backend_name(&t))
                .unwrap_or_default(),
            backend_data: raw("BackendData"),
            backend_v6_data: raw("BackendV6Data"),
        })
    }
}

/// A backend's name as leases carry it. Nearly every lease says "vxlan": sharing one static
/// string saves an allocation per lease (10 000 of them on every node of a large cluster).
pub fn backend_name(name: &str) -> Cow<'static, str> {
    match name {
        "vxlan" => Cow::Borrowed("vxlan"),
        "host-gw" => Cow::Borrowed("host-gw"),
        other => Cow::Owned(other.to_string()),
    }
}

/// `BackendData` of a vxlan lease: what a peer needs to reach our VTEP. Keys match as in
/// [`LeaseAttrs`] (`vni`, `vtepMAC` are flanneld's too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanBackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl<'de> Deserialize<'de> for VxlanBackendData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let o = GoObject::read(d)?;
        Ok(VxlanBackendData {
            vni: o
                .field("VNI")?
                .ok_or_else(|| D::Error::missing_field("VNI"))?,
            vtep_mac: o
                .field("VtepMAC")?
                .ok_or_else(|| D::Error::missing_field("VtepMAC"))?,
        })
    }
}

impl LeaseAttrs {
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: &str) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(RawJson::of(&VxlanBackendData {
                vni,
                vtep_mac: vtep_mac.into(),
            })),
            backend_v6_data: None,
        }
    }

    /// A host-gw lease as flanneld writes it: its type and PublicIP, no backend data.
    pub fn host_gw(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Cow::Borrowed("host-gw"),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Which node a lease belongs to, as a node finds its own lease again: by PublicIP,
    /// or on an IPv6-only network (PublicIP 0.0.0.0, as flanneld writes it there) by
    /// PublicIPv6.
    pub fn node_ip(&self) -> IpAddr {
        node_ip(self.public_ip, self.public_ipv6)
    }

    /// A reservation's value: an operator pinned the subnet to a PublicIP and no node has
    /// published a backend for it yet, so it is nobody's peer (nor a bad one).
    pub fn is_placeholder(&self) -> bool {
        self.backend_type.is_empty() && self.backend_data.is_none()
    }

    /// The VXLAN data when this is a vxlan lease with well-formed data.
    pub fn vxlan_data(&self) -> Option<VxlanBackendData> {
        if self.backend_type != "vxlan" {
            return None;
        }
        serde_json::from_str(self.backend_data.as_ref()?.get()).ok()
    }

    /// The IPv6 device's VXLAN data (`BackendV6Data`) when well-formed.
    pub fn vxlan_v6_data(&self) -> Option<VxlanBackendData> {
        if self.backend_type != "vxlan" {
            return None;
        }
        serde_json::from_str(self.backend_v6_data.as_ref()?.get()).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain struct")
    }
}

/// What a lease with these addresses is known by (`LeaseAttrs::node_ip`), for a node that
/// has not written its lease yet.
pub fn node_ip(public_ip: Ipv4Addr, public_ipv6: Option<Ipv6Addr>) -> IpAddr {
    match public_ipv6 {
        Some(ip6) if public_ip.is_unspecified() => IpAddr::V6(ip6),
        _ => IpAddr::V4(public_ip),
    }
}

/// The subnet(s) a lease is for; the last segment of the etcd key, `10.244.3.0-24` or,
/// dual-stack, `10.244.3.0-24&fd00:10:244:3::-64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub v4: Option<IpNetwork>,
    pub v6: Option<IpNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed subnet key {0:?} (expected e.g. 10.244.3.0-24)")]
pub struct LeaseKeyError(pub String);

impl LeaseKey {
    pub fn v4(net: IpNetwork) -> Self {
        LeaseKey {
            v4: Some(net),
            v6: None,
        }
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |n: &IpNetwork| format!("{}-{}", n.ip(), n.prefix());
        match (&self.v4, &self.v6) {
            (Some(a), Some(b)) => write!(f, "{}&{}", part(a), part(b)),
            (Some(a), None) => f.write_str(&part(a)),
            // flannel has no v6-only key form of its own; mirror its dual-stack shape with
            // an empty v4 part so both sides parse the other's keys.
            (None, Some(b)) => write!(f, "0.0.0.0-0&{}", part(b)),
            (None, None) => f.write_str("0.0.0.0-0"),
        }
    }
}

impl FromStr for LeaseKey {
    type Err = LeaseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LeaseKeyError(s.to_string());
        let part = |p: &str| -> Result<IpNetwork, LeaseKeyError> {
            let (ip, len) = p.rsplit_once('-').ok_or_else(bad)?;
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            let n = IpNetwork::new(ip, len).map_err(|_| bad())?;
            if n.network() != ip {
                return Err(bad());
            }
            Ok(n)
        };
        let (a, b) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let v4 = part(a)?;
        if !v4.is_ipv4() {
            return Err(bad());
        }
        let v4 = (v4.prefix() != 0).then_some(v4);
        let v6 = match b {
            Some(b) => {
                let n = part(b)?;
                if !n.is_ipv6() {
                    return Err(bad());
                }
                Some(n)
            }
            None => None,
        };
        if v4.is_none() && v6.is_none() {
            return Err(bad());
        }
        Ok(LeaseKey { v4, v6 })
    }
}

/// One key under `<prefix>/subnets/` as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub key: LeaseKey,
    /// `None` when the value is not valid lease JSON: the subnet is still taken.
    pub attrs: Option<LeaseAttrs>,
    /// Written without a TTL: in etcd, an operator's reservation for the node with that
    /// PublicIP; every Kubernetes lease (it lives as long as its node object).
    pub reservation: bool,
    /// The store's revision of this write: what a compare-and-swap is guarded by.
    pub mod_revision: i64,
}

impl StoredLease {
    pub fn is_reservation(&self) -> bool {
        self.reservation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_json_matches_flannel() {
        let a = LeaseAttrs::vxlan("198.18.0.3".parse().unwrap(), 1, "c6:d2:32:6f:8f:44");
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let flannel = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let parsed: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(parsed.vxlan_data().unwrap().vtep_mac, "c6:d2:32:6f:8f:44");
        assert_eq!(parsed.to_json(), flannel);
    }

    #[test]
    fn other_backends_data_round_trips_byte_for_byte() {
        let text = r#"{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"abc=","Extra":[1, 2]}}"#;
        let a: LeaseAttrs = serde_json::from_str(text).unwrap();
        assert_eq!(a.to_json(), text);
        assert_eq!(a.vxlan_data(), None);
        let b: LeaseAttrs = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(a, b);
        assert!(RawJson::parse("{not json").is_none());
    }

    #[test]
    fn keys_match_ignoring_case_as_flanneld_reads_them() {
        // Go's decoder (flanneld's) takes these; a lease written by hand may use them.
        let text = r#"{"publicIP":"198.18.0.9","backendtype":"vxlan","BACKENDDATA":{"vni":1,"vtepMAC":"0a:00:00:00:00:09"}}"#;
        let a: LeaseAttrs = serde_json::from_str(text).unwrap();
        assert_eq!(a.public_ip.to_string(), "198.18.0.9");
        let d = a.vxlan_data().unwrap();
        assert_eq!((d.vni, d.vtep_mac.as_str()), (1, "0a:00:00:00:00:09"));
        // An exact key wins over one that only matches ignoring case.
        let both = r#"{"publicip":"198.18.0.1","PublicIP":"198.18.0.2"}"#;
        let a: LeaseAttrs = serde_json::from_str(both).unwrap();
        assert_eq!(a.public_ip.to_string(), "198.18.0.2");
        // Written back in flannel's own spelling.
        assert!(a.to_json().starts_with(r#"{"PublicIP":"198.18.0.2""#));
        for bad in [
            r#"{"PublicIP":"nope"}"#,
            r#"{"BackendType":"vxlan"}"#,
            "[1]",
        ] {
            assert!(serde_json::from_str::<LeaseAttrs>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reservation_without_backend_parses() {
        let a: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"198.18.0.9"}"#).unwrap();
        assert!(a.vxlan_data().is_none());
    }

    #[test]
    fn keys_round_trip() {
        for k in [
            "10.244.3.0-24",
            "10.244.3.0-24&fd00:10:244:3::-64",
            "0.0.0.0-0&fd00::-64",
        ] {
            assert_eq!(k.parse::<LeaseKey>().unwrap().to_string(), k);
        }
        for bad in [
            "10.244.3.1-24",
            "10.244.3.0",
            "x-24",
            "fd00::-64",
            "10.244.3.0-33",
            "0.0.0.0-0",
        ] {
            assert!(bad.parse::<LeaseKey>().is_err(), "{bad}");
        }
    }
}
