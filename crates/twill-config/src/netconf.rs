use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::range::{addr_from_u128, addr_to_u128, SubnetRange};

mod bgp;
mod complete;
use crate::DEFAULT_VXLAN_PORT;
pub use bgp::{check_asn, BgpConf, BgpPeer, DEFAULT_GRACEFUL_RESTART_TIME};
pub use complete::{enables_ipv6, fill_networks, needs_detection};

/// A rejected configuration. It always names the offending field and the value found, so
/// an operator can fix the file without reading our source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("net-conf.json: {field}={value}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: &str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Something accepted but probably not what the author meant (an unknown key, a CIDR with
/// host bits). Logged by the caller; never fatal, because flannel accepts these too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    Vxlan,
    /// flannel's host-gw: every peer subnet routed via the peer's PublicIP on the
    /// underlay, no encapsulation; every node must share one L2 segment.
    HostGw,
}

impl BackendType {
    /// The string flannel stores in leases and annotations (`BackendType`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
        }
    }

    pub fn is_vxlan(self) -> bool {
        self == BackendType::Vxlan
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConf {
    pub kind: BackendType,
    pub vni: u32,
    pub port: u16,
    /// Underlay MTU override (flannel's `Backend.MTU` is the *underlay* MTU, not the overlay's).
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

impl Default for BackendConf {
    fn default() -> Self {
        BackendConf {
            kind: BackendType::Vxlan,
            vni: 1,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

/// A validated net-conf.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub ipv4: Option<SubnetRange>,
    pub ipv6: Option<SubnetRange>,
    pub enable_nftables: bool,
    pub backend: BackendConf,
    /// `NonMasqueradeCIDRs` (twill's): destinations our pods reach without NAT, such as
    /// the pod network of the CNI a cluster is migrating to. Both families, in order.
    pub non_masquerade: Vec<IpNetwork>,
    /// `BGP` (twill's): announce this node's pod subnets to the site's routers.
    pub bgp: Option<BgpConf>,
}

/// Backend types flannel knows but twill does not implement: a clearer message than
/// "unknown" for someone migrating a host-gw or wireguard cluster.
const FLANNEL_ONLY_BACKENDS: &[&str] = &[
    "udp",
    "wireguard",
    "ipip",
    "ipsec",
    "alloc",
    "extension",
    "tencent-vpc",
    "ali-vpc",
    "aws-vpc",
    "gce",
];

const VNI_MAX: u64 = (1 << 24) - 1;
/// Below this underlay MTU the overlay MTU would drop under IPv4's minimum of 68.
const MTU_MIN: u64 = 68 + crate::VXLAN_OVERHEAD_V4 as u64;

/// JSON object fields looked up the way Go's encoding/json does (exact match first, then
/// case-insensitive), so every spelling flanneld accepts is accepted here. Whatever is not
/// taken is reported as unknown.
struct Fields {
    prefix: &'static str,
    entries: BTreeMap<String, Value>,
}

impl Fields {
    fn new(prefix: &'static str, value: Value, what: &str) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Fields {
                prefix,
                entries: map.into_iter().collect(),
            }),
            other => Err(ConfigError::new(
                what,
                compact(&other),
                "expected a JSON object",
            )),
        }
    }

    /// Removes and returns the field, `None` when absent or `null` (Go's zero value).
    fn take(&mut self, name: &str) -> Option<Value> {
        let key = if self.entries.contains_key(name) {
            name.to_string()
        } else {
            self.entries
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))?
                .clone()
        };
        match self.entries.remove(&key) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    fn label(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    fn bool(&mut self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(ConfigError::new(
                &self.label(name),
                compact(&v),
                "expected true or false",
            )),
        }
    }

    fn uint(&mut self, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ConfigError::new(
                    &self.label(name),
                    compact(&v),
                    "expected a whole number ≥ 0",
                )
            }),
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ConfigError::new(
                &self.label(name),
                compact(&v),
                "expected a string",
            )),
        }
    }

    fn cidr(
        &mut self,
        name: &str,
        v4: bool,
        warnings: &mut Vec<Warning>,
    ) -> Result<Option<IpNetwork>, ConfigError> {
        let Some(s) = self.string(name)? else {
            return Ok(None);
        };
        let family = if v4 { "IPv4" } else { "IPv6" };
        let net: IpNetwork = s.parse().map_err(|_| {
            ConfigError::new(
                name,
                &s,
                format!("not an {family} CIDR (e.g. {})", example(v4)),
            )
        })?;
        if net.is_ipv4() != v4 {
            return Err(ConfigError::new(
                name,
                &s,
                format!("not an {family} CIDR (e.g. {})", example(v4)),
            ));
        }
        let normal = IpNetwork::new(net.network(), net.prefix()).expect("same prefix");
        if normal != net {
            warnings.push(Warning(format!(
                "{name}={s} has host bits set; using {normal}"
            )));
        }
        Ok(Some(normal))
    }

    /// A list of CIDRs of either family, each named by its index in errors and warnings
    /// (host bits are masked with a warning, as for `Network`); repeats are dropped.
    fn cidr_list(
        &mut self,
        name: &str,
        warnings: &mut Vec<Warning>,
    ) -> Result<Vec<IpNetwork>, ConfigError> {
        let items = match self.take(name) {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(v) => {
                return Err(ConfigError::new(
                    &self.label(name),
                    compact(&v),
                    "expected a list of CIDRs, e.g. [\"172.20.0.0/16\"]",
                ))
            }
        };
        let mut out: Vec<IpNetwork> = Vec::new();
        for (i, v) in items.into_iter().enumerate() {
            let label = format!("{}[{i}]", self.label(name));
            let net: IpNetwork = v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                ConfigError::new(
                    &label,
                    compact(&v),
                    "not a CIDR (e.g. 172.20.0.0/16 or fd00:20::/56)",
                )
            })?;
            let normal = IpNetwork::new(net.network(), net.prefix()).expect("same prefix");
            if normal != net {
                warnings.push(Warning(format!(
                    "{label}={net} has host bits set; using {normal}"
                )));
            }
            if !out.contains(&normal) {
                out.push(normal);
            }
        }
        Ok(out)
    }

    fn addr(&mut self, name: &str, v4: bool) -> Result<Option<IpAddr>, ConfigError> {
        let Some(s) = self.string(name)? else {
            return Ok(None);
        };
        match s.parse::<IpAddr>() {
            Ok(a) if a.is_ipv4() == v4 => Ok(Some(a)),
            _ => Err(ConfigError::new(
                name,
                &s,
                format!("not an {} address", if v4 { "IPv4" } else { "IPv6" }),
            )),
        }
    }

    fn leftovers(self, warnings: &mut Vec<Warning>, note: impl Fn(&str) -> Option<&'static str>) {
        for key in self.entries.keys() {
            let why = note(key).unwrap_or("unknown key, ignored");
            warnings.push(Warning(format!("{}{key}: {why}", self.prefix)));
        }
    }
}

fn example(v4: bool) -> &'static str {
    if v4 {
        "10.244.0.0/16"
    } else {
        "fd00:10:244::/56"
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

/// Family-specific limits and field names; the arithmetic is shared.
struct Family {
    v4: bool,
    network: &'static str,
    subnet_len: &'static str,
    subnet_min: &'static str,
    subnet_max: &'static str,
    /// Longest Network prefix that still holds four subnets of the longest SubnetLen.
    max_network_prefix: u8,
    max_subnet_len: u8,
    default_subnet_len: u8,
}

const V4: Family = Family {
    v4: true,
    network: "Network",
    subnet_len: "SubnetLen",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
    max_network_prefix: 28,
    max_subnet_len: 30,
    default_subnet_len: 24,
};

const V6: Family = Family {
    v4: false,
    network: "IPv6Network",
    subnet_len: "IPv6SubnetLen",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
    max_network_prefix: 124,
    max_subnet_len: 126,
    default_subnet_len: 64,
};

impl Family {
    fn range(
        &self,
        network: IpNetwork,
        subnet_len: Option<u64>,
        min: Option<IpAddr>,
        max: Option<IpAddr>,
    ) -> Result<SubnetRange, ConfigError> {
        let prefix = network.prefix();
        if prefix > self.max_network_prefix {
            return Err(ConfigError::new(
                self.network,
                network,
                format!(
                    "prefix too long: must be /{} or shorter to hold at least four subnets",
                    self.max_network_prefix
                ),
            ));
        }
        // Go's zero value: an explicit 0 means "pick the default", as in flannel.
        let subnet_len = match subnet_len {
            None | Some(0) => {
                if prefix + 2 <= self.default_subnet_len {
                    self.default_subnet_len
                } else {
                    prefix + 2
                }
            }
            Some(l) if l > self.max_subnet_len as u64 => {
                return Err(ConfigError::new(
                    self.subnet_len,
                    l,
                    format!("must be at most {}", self.max_subnet_len),
                ))
            }
            Some(l) if l < prefix as u64 + 2 => {
                return Err(ConfigError::new(
                    self.subnet_len,
                    l,
                    format!(
                        "must be at least {} so that {network} holds at least four subnets",
                        prefix + 2
                    ),
                ))
            }
            Some(l) => l as u8,
        };

        let bits: u32 = if self.v4 { 32 } else { 128 };
        let size = 1u128 << (bits - subnet_len as u32);
        let net_start = addr_to_u128(network.network());
        let net_size = (1u128 << (bits - prefix as u32 - 1)) << 1;
        let net_last_subnet = net_start.wrapping_add(net_size).wrapping_sub(size);

        let check = |field: &str, a: IpAddr| -> Result<u128, ConfigError> {
            let v = addr_to_u128(a);
            if !network.contains(a) {
                return Err(ConfigError::new(
                    field,
                    a,
                    format!("outside {} {network}", self.network),
                ));
            }
            if !v.is_multiple_of(size) {
                return Err(ConfigError::new(
                    field,
                    a,
                    format!(
                        "not aligned to a /{subnet_len} boundary ({} is {subnet_len})",
                        self.subnet_len
                    ),
                ));
            }
            Ok(v)
        };
        let min = match min {
            Some(a) => check(self.subnet_min, a)?,
            None => net_start + size,
        };
        let max = match max {
            Some(a) => check(self.subnet_max, a)?,
            None => net_last_subnet,
        };
        if min > max {
            return Err(ConfigError::new(
                self.subnet_min,
                addr_from_u128(min, self.v4),
                format!(
                    "greater than {} {}",
                    self.subnet_max,
                    addr_from_u128(max, self.v4)
                ),
            ));
        }
        Ok(SubnetRange {
            network,
            subnet_len,
            min: addr_from_u128(min, self.v4),
            max: addr_from_u128(max, self.v4),
        })
    }
}

impl NetConf {
    /// `Network`, typed: parsing guarantees the IPv4 range holds an IPv4 network.
    pub fn network4(&self) -> Option<ipnetwork::Ipv4Network> {
        match self.ipv4.as_ref()?.network {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }

    /// `IPv6Network`, typed, when IPv6 is enabled.
    pub fn network6(&self) -> Option<ipnetwork::Ipv6Network> {
        match self.ipv6.as_ref()?.network {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }

    /// Parses and validates a net-conf.json document.
    pub fn parse(text: &str) -> Result<(NetConf, Vec<Warning>), ConfigError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            ConfigError::new(
                "(document)",
                format!("line {} column {}", e.line(), e.column()),
                format!("invalid JSON: {e}"),
            )
        })?;
        Self::from_value(doc)
    }

    pub fn from_value(doc: Value) -> Result<(NetConf, Vec<Warning>), ConfigError> {
        let mut warnings = Vec::new();
        let mut f = Fields::new("", doc, "(document)")?;

        let enable_ipv4 = f.bool("EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = f.bool("EnableIPv6")?.unwrap_or(false);
        let enable_nftables = f.bool("EnableNFTables")?.unwrap_or(false);

        let network = f.cidr("Network", true, &mut warnings)?;
        let subnet_len = f.uint("SubnetLen")?;
        let subnet_min = f.addr("SubnetMin", true)?;
        let subnet_max = f.addr("SubnetMax", true)?;
        let network6 = f.cidr("IPv6Network", false, &mut warnings)?;
        let subnet_len6 = f.uint("IPv6SubnetLen")?;
        let subnet_min6 = f.addr("IPv6SubnetMin", false)?;
        let subnet_max6 = f.addr("IPv6SubnetMax", false)?;
        let backend = match f.take("Backend") {
            None => BackendConf::default(),
            Some(v) => parse_backend(v, &mut warnings)?,
        };
        let non_masquerade = f.cidr_list("NonMasqueradeCIDRs", &mut warnings)?;
        let bgp = match f.take("BGP") {
            None => None,
            Some(v) => Some(bgp::parse_bgp(v, &mut warnings)?),
        };
        f.leftovers(&mut warnings, |k| {
            if k.eq_ignore_ascii_case("Networks") || k.eq_ignore_ascii_case("IPv6Networks") {
                Some("multiple networks are not supported, ignored")
            } else {
                None
            }
        });

        if !enable_ipv4 && !enable_ipv6 {
            return Err(ConfigError::new(
                "EnableIPv4",
                false,
                "EnableIPv4 and EnableIPv6 are both false: no network to build",
            ));
        }
        let ipv4 = if enable_ipv4 {
            let net = network.ok_or_else(|| {
                ConfigError::new("Network", "(missing)", "required when EnableIPv4 is true")
            })?;
            Some(V4.range(net, subnet_len, subnet_min, subnet_max)?)
        } else {
            None
        };
        let ipv6 = if enable_ipv6 {
            let net = network6.ok_or_else(|| {
                ConfigError::new(
                    "IPv6Network",
                    "(missing)",
                    "required when EnableIPv6 is true",
                )
            })?;
            Some(V6.range(net, subnet_len6, subnet_min6, subnet_max6)?)
        } else {
            None
        };
        Ok((
            NetConf {
                ipv4,
                ipv6,
                enable_nftables,
                backend,
                non_masquerade,
                bgp,
            },
            warnings,
        ))
    }

    /// The networks exempt from masquerading, both families: `NonMasqueradeCIDRs` and
    /// then `extra` (the `--no-masq-cidr` flags), masked, without repeats. The daemon and
    /// doctor both take them from here.
    pub fn exempt_from_masquerade(&self, extra: &[IpNetwork]) -> Vec<IpNetwork> {
        let mut out = Vec::new();
        for n in self.non_masquerade.iter().chain(extra) {
            let n = IpNetwork::new(n.network(), n.prefix()).expect("same prefix");
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// Whether `(v4, v6)` subnets of a lease can be kept under this configuration.
    pub fn fits(&self, v4: Option<&IpNetwork>, v6: Option<&IpNetwork>) -> bool {
        let family_fits = |range: &Option<SubnetRange>, s: Option<&IpNetwork>| match (range, s) {
            (Some(r), Some(s)) => r.fits(s),
            (None, None) => true,
            _ => false,
        };
        family_fits(&self.ipv4, v4) && family_fits(&self.ipv6, v6)
    }
}

fn parse_backend(v: Value, warnings: &mut Vec<Warning>) -> Result<BackendConf, ConfigError> {
    let mut f = Fields::new("Backend.", v, "Backend")?;
    let mut b = BackendConf::default();
    if let Some(t) = f.string("Type")? {
        let lower = t.to_ascii_lowercase();
        b.kind = match lower.as_str() {
            "vxlan" => BackendType::Vxlan,
            "host-gw" => BackendType::HostGw,
            other if FLANNEL_ONLY_BACKENDS.contains(&other) => {
                return Err(ConfigError::new(
                    "Backend.Type",
                    &t,
                    "a flannel backend twill does not implement (supported: vxlan, host-gw)",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    "Backend.Type",
                    &t,
                    "unknown backend type (supported: vxlan, host-gw)",
                ))
            }
        };
    }
    if b.kind == BackendType::HostGw {
        // flanneld's host-gw reads none of vxlan's options; say so rather than let an
        // operator believe a VNI or an MTU took effect.
        f.leftovers(warnings, |_| {
            Some("not an option of the host-gw backend, ignored")
        });
        return Ok(b);
    }
    if let Some(vni) = f.uint("VNI")? {
        if !(1..=VNI_MAX).contains(&vni) {
            return Err(ConfigError::new(
                "Backend.VNI",
                vni,
                format!("must be between 1 and {VNI_MAX}"),
            ));
        }
        b.vni = vni as u32;
    }
    if let Some(port) = f.uint("Port")? {
        // flannel treats 0 as "the kernel default", which is 8472.
        match port {
            0 => {}
            1..=65535 => b.port = port as u16,
            _ => {
                return Err(ConfigError::new(
                    "Backend.Port",
                    port,
                    "must be between 1 and 65535",
                ))
            }
        }
    }
    if let Some(mtu) = f.uint("MTU")? {
        if mtu != 0 {
            if !(MTU_MIN..=65535).contains(&mtu) {
                return Err(ConfigError::new(
                    "Backend.MTU",
                    mtu,
                    format!(
                        "must be between {MTU_MIN} and 65535 (it is the underlay MTU; the overlay gets it minus the VXLAN overhead)"
                    ),
                ));
            }
            b.mtu = Some(mtu as u32);
        }
    }
    b.gbp = f.bool("GBP")?.unwrap_or(false);
    b.learning = f.bool("Learning")?.unwrap_or(false);
    b.direct_routing = f.bool("DirectRouting")?.unwrap_or(false);
    f.leftovers(warnings, |k| {
        if k.eq_ignore_ascii_case("MacPrefix") || k.eq_ignore_ascii_case("Name") {
            Some("Windows-only option, ignored")
        } else {
            None
        }
    });
    Ok(b)
}

#[cfg(test)]
mod tests;
