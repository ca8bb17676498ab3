use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;

/// The contents of flannel's `subnet.env`: the contract between the daemon and every CNI
/// plugin (ours and flannel's) on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK; flannel allows a comma-separated list.
    pub networks: Vec<IpNetwork>,
    /// FLANNEL_SUBNET: the node's first usable address with the lease prefix (10.244.3.1/24).
    pub subnet: Option<IpNetwork>,
    pub ipv6_networks: Vec<IpNetwork>,
    pub ipv6_subnet: Option<IpNetwork>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("{file}: line {line}: {key}={value}: {reason}")]
    Value {
        file: String,
        line: usize,
        key: String,
        value: String,
        reason: &'static str,
    },
}

impl SubnetEnv {
    /// Builds the file for a lease: FLANNEL_SUBNET carries `.1` of the leased subnet, the
    /// address the bridge plugin gives cni0.
    pub fn for_lease(
        network: Option<IpNetwork>,
        lease: Option<IpNetwork>,
        network6: Option<IpNetwork>,
        lease6: Option<IpNetwork>,
        mtu: u32,
        ipmasq: bool,
    ) -> Self {
        SubnetEnv {
            networks: network.into_iter().collect(),
            subnet: lease.map(first_usable),
            ipv6_networks: network6.into_iter().collect(),
            ipv6_subnet: lease6.map(first_usable),
            mtu: Some(mtu),
            ipmasq: Some(ipmasq),
        }
    }

    /// Same order and spelling as flanneld writes, so scripts that grep it keep working.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let join = |v: &[IpNetwork]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.networks.is_empty() {
            let _ = writeln!(out, "FLANNEL_NETWORK={}", join(&self.networks));
        }
        if let Some(s) = self.subnet {
            let _ = writeln!(out, "FLANNEL_SUBNET={s}");
        }
        if !self.ipv6_networks.is_empty() {
            let _ = writeln!(out, "FLANNEL_IPV6_NETWORK={}", join(&self.ipv6_networks));
        }
        if let Some(s) = self.ipv6_subnet {
            let _ = writeln!(out, "FLANNEL_IPV6_SUBNET={s}");
        }
        if let Some(m) = self.mtu {
            let _ = writeln!(out, "FLANNEL_MTU={m}");
        }
        if let Some(m) = self.ipmasq {
            let _ = writeln!(out, "FLANNEL_IPMASQ={m}");
        }
        out
    }

    /// Parses the file as flannel's CNI plugin does: lines that are not a known
    /// `KEY=VALUE` are ignored (other tools append to the file), FLANNEL_IPMASQ is true only
    /// when it says `true`, and each network list is masked to its prefix and loses repeats.
    /// A known key with a bad value is an error naming the line, so a hand-edited file
    /// fails loudly.
    pub fn parse(text: &str, file: &str) -> Result<Self, SubnetEnvError> {
        let mut env = SubnetEnv::default();
        for (i, raw) in text.lines().enumerate() {
            let Some((key, value)) = raw.trim().split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            let bad = |reason| SubnetEnvError::Value {
                file: file.into(),
                line: i + 1,
                key: key.into(),
                value: value.into(),
                reason,
            };
            let cidrs = |v4: bool| -> Result<Vec<IpNetwork>, SubnetEnvError> {
                let mut nets: Vec<IpNetwork> = Vec::new();
                for s in value.split(',').filter(|s| !s.is_empty()) {
                    let n = match s.trim().parse::<IpNetwork>() {
                        Ok(n) if n.is_ipv4() == v4 => network_of(n),
                        _ => {
                            return Err(bad(if v4 {
                                "expected IPv4 CIDRs"
                            } else {
                                "expected IPv6 CIDRs"
                            }))
                        }
                    };
                    if !nets.contains(&n) {
                        nets.push(n);
                    }
                }
                Ok(nets)
            };
            let one = |v4: bool| -> Result<Option<IpNetwork>, SubnetEnvError> {
                match value.parse::<IpNetwork>() {
                    Ok(n) if n.is_ipv4() == v4 => Ok(Some(n)),
                    _ => Err(bad(if v4 {
                        "expected an IPv4 address/prefix"
                    } else {
                        "expected an IPv6 address/prefix"
                    })),
                }
            };
            match key {
                "FLANNEL_NETWORK" => env.networks = cidrs(true)?,
                "FLANNEL_SUBNET" => env.subnet = one(true)?,
                "FLANNEL_IPV6_NETWORK" => env.ipv6_networks = cidrs(false)?,
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = one(false)?,
                "FLANNEL_MTU" => {
                    env.mtu = Some(value.parse().map_err(|_| bad("expected a number"))?)
                }
                "FLANNEL_IPMASQ" => env.ipmasq = Some(value == "true"),
                _ => {}
            }
        }
        Ok(env)
    }

    /// The keys a CNI plugin needs that the file lacks, named as flannel's plugin names
    /// them: one family's network and subnet are enough.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.networks.is_empty() && self.ipv6_networks.is_empty() {
            m.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
        }
        if self.subnet.is_none() && self.ipv6_subnet.is_none() {
            m.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
        }
        if self.mtu.is_none() {
            m.push("FLANNEL_MTU");
        }
        if self.ipmasq.is_none() {
            m.push("FLANNEL_IPMASQ");
        }
        m
    }

    /// The leased subnet (network address) behind FLANNEL_SUBNET.
    pub fn lease_subnet(&self) -> Option<IpNetwork> {
        self.subnet.map(network_of)
    }

    pub fn lease_subnet6(&self) -> Option<IpNetwork> {
        self.ipv6_subnet.map(network_of)
    }
}

fn network_of(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).expect("same prefix")
}

fn first_usable(n: IpNetwork) -> IpNetwork {
    let ip = match n.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    };
    IpNetwork::new(ip, n.prefix()).expect("same prefix")
}

/// Writes `contents` to `path` so readers see the old file or the new one, never a torn
/// one: temp file in the same directory, fsync, chmod, rename, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_flanneld() {
        let env = SubnetEnv::for_lease(
            Some("10.244.0.0/16".parse().unwrap()),
            Some("10.244.3.0/24".parse().unwrap()),
            None,
            None,
            1450,
            true,
        );
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn renders_dual_stack() {
        let env = SubnetEnv::for_lease(
            Some("10.244.0.0/16".parse().unwrap()),
            Some("10.244.3.0/24".parse().unwrap()),
            Some("fd00:10:244::/56".parse().unwrap()),
            Some("fd00:10:244:3::/64".parse().unwrap()),
            1450,
            false,
        );
        let text = env.render();
        assert!(text.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"));
        assert!(text.contains("FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"));
        assert_eq!(SubnetEnv::parse(&text, "x").unwrap(), env);
    }

    #[test]
    fn parse_round_trip_and_lease() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nOTHER=1\n";
        let env = SubnetEnv::parse(text, "subnet.env").unwrap();
        assert_eq!(env.lease_subnet().unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(env.render(), text.replace("OTHER=1\n", ""));
    }

    #[test]
    fn comma_separated_networks() {
        let env = SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16\n", "f").unwrap();
        assert_eq!(env.networks.len(), 2);
    }

    /// flannel's CNI plugin: each network masked to its prefix, repeats dropped in order.
    #[test]
    fn networks_are_masked_and_deduplicated() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.2.3/16,192.168.0.0/16,10.1.0.0/16\nFLANNEL_IPV6_NETWORK=fc00::1/48,fc00::/48\n",
            "f",
        )
        .unwrap();
        let s = |v: &[IpNetwork]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(s(&env.networks), ["10.1.0.0/16", "192.168.0.0/16"]);
        assert_eq!(s(&env.ipv6_networks), ["fc00::/48"]);
    }

    /// flannel's CNI plugin ignores what it doesn't know and reads IPMASQ as `== "true"`.
    #[test]
    fn unknown_lines_are_ignored_and_ipmasq_is_true_only_for_true() {
        let env = SubnetEnv::parse(
            "garbage\n#FLANNEL_MTU=1\nfoo=bar\nFLANNEL_IPMASQ=True\n",
            "f",
        )
        .unwrap();
        assert_eq!(env.mtu, None);
        assert_eq!(env.ipmasq, Some(false));
        for (v, want) in [
            ("true", true),
            ("false", false),
            ("1", false),
            ("yes", false),
        ] {
            let env = SubnetEnv::parse(&format!("FLANNEL_IPMASQ={v}"), "f").unwrap();
            assert_eq!(env.ipmasq, Some(want), "{v}");
        }
    }

    #[test]
    fn missing_keys_are_named_as_flannel_names_them() {
        let all = [
            "FLANNEL_NETWORK",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ",
        ];
        assert_eq!(SubnetEnv::parse("foo=bar", "f").unwrap().missing(), all);
        let v6 = SubnetEnv::parse(
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\n",
            "f",
        )
        .unwrap();
        assert_eq!(v6.missing(), ["FLANNEL_IPMASQ"]);
    }

    #[test]
    fn bad_values_name_the_line_and_key() {
        let e = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=big\n",
            "/run/flannel/subnet.env",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/run/flannel/subnet.env: line 2: FLANNEL_MTU=big"),
            "{e}"
        );
        let e = SubnetEnv::parse("FLANNEL_SUBNET=fd00::1/64", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLANNEL_SUBNET"), "{e}");
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/subnet.env");
        write_atomic(&p, b"A=1\n", 0o644).unwrap();
        write_atomic(&p, b"A=2\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=2\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let leftovers = std::fs::read_dir(p.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file left behind");
    }
}
