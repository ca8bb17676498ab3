//! `--ip-blackhole-route`: a blackhole route for the node's own subnet, so traffic to a pod
//! address no local pod holds is dropped here instead of following the default route out
//! (and, through a router that sends the pod network back to us, looping until its TTL
//! runs out). That happens whenever cni0 is absent or has no address: before the first pod,
//! or after the bridge was deleted.
//!
//! flanneld adds the route with metric 0. The kernel appends the connected route cni0 gets
//! later behind a route of the same prefix and metric, so the blackhole then shadows every
//! local pod (`ip route get <pod>` fails with "Invalid argument"). Ours has the highest
//! metric instead: any other route to the subnet wins, and the blackhole only catches what
//! nothing else routes. flanneld's metric-0 form, found on a node it ran on, is replaced.

use ipnetwork::IpNetwork;

/// The blackhole's metric: after every other route to the same prefix.
pub const BLACKHOLE_METRIC: u32 = u32::MAX;

/// A main-table blackhole route, of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blackhole {
    pub net: IpNetwork,
    pub metric: u32,
}

impl std::fmt::Display for Blackhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blackhole {} metric {}", self.net, self.metric)
    }
}

/// What to change so that `want` (our subnet, when the flag is on) has our blackhole and no
/// other subnet-shaped blackhole of the overlay network is left of ours or flanneld's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlackholePlan {
    pub add: Option<IpNetwork>,
    pub del: Vec<Blackhole>,
}

/// Only blackholes shaped like a lease (inside `network`, the lease's prefix length) are
/// considered: one covering the whole network is an administrator's catch-all and stays.
/// Of those, ours (our metric) go unless wanted, and flanneld's form (metric 0) goes for
/// our own subnet, where it would shadow cni0's route. A blackhole at another metric, or
/// flanneld's for another subnet, is nobody's we know and stays.
pub fn plan(found: &[Blackhole], network: IpNetwork, own: IpNetwork, want: bool) -> BlackholePlan {
    let wanted = Blackhole {
        net: own,
        metric: BLACKHOLE_METRIC,
    };
    let lease_shaped = |b: &Blackhole| {
        b.net.is_ipv4() == own.is_ipv4()
            && b.net.prefix() == own.prefix()
            && network.contains(b.net.network())
            && network != b.net
    };
    let del = found
        .iter()
        .filter(|b| lease_shaped(b))
        .filter(|b| {
            let ours = b.metric == BLACKHOLE_METRIC && !(want && **b == wanted);
            let flanneld_own = b.metric == 0 && b.net == own;
            ours || flanneld_own
        })
        .copied()
        .collect();
    BlackholePlan {
        add: (want && !found.contains(&wanted)).then_some(own),
        del,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn bh(s: &str, metric: u32) -> Blackhole {
        Blackhole {
            net: net(s),
            metric,
        }
    }
    const NETWORK: &str = "10.244.0.0/16";
    const OWN: &str = "10.244.7.0/24";

    #[test]
    fn added_when_wanted_and_missing_kept_when_present() {
        let p = plan(&[], net(NETWORK), net(OWN), true);
        assert_eq!(p.add, Some(net(OWN)));
        assert!(p.del.is_empty());
        let p = plan(&[bh(OWN, BLACKHOLE_METRIC)], net(NETWORK), net(OWN), true);
        assert_eq!(p, BlackholePlan::default());
    }

    #[test]
    fn ours_removed_when_not_wanted_or_for_an_old_lease() {
        let found = [
            bh(OWN, BLACKHOLE_METRIC),
            bh("10.244.3.0/24", BLACKHOLE_METRIC),
        ];
        let p = plan(&found, net(NETWORK), net(OWN), false);
        assert_eq!(p.add, None);
        assert_eq!(p.del, found.to_vec());
        let p = plan(&found, net(NETWORK), net(OWN), true);
        assert_eq!(p.del, [bh("10.244.3.0/24", BLACKHOLE_METRIC)]);
        assert_eq!(p.add, None);
    }

    #[test]
    fn flanneld_form_for_our_subnet_is_replaced_either_way() {
        let found = [bh(OWN, 0)];
        let p = plan(&found, net(NETWORK), net(OWN), true);
        assert_eq!(p.add, Some(net(OWN)));
        assert_eq!(p.del, [bh(OWN, 0)]);
        let p = plan(&found, net(NETWORK), net(OWN), false);
        assert_eq!(p.add, None);
        assert_eq!(p.del, [bh(OWN, 0)]);
    }

    #[test]
    fn ipv6_subnets_as_ipv4_ones() {
        let (network, own) = (net("fd00:10:244::/56"), net("fd00:10:244:7::/64"));
        let found = [
            bh("fd00:10:244:3::/64", BLACKHOLE_METRIC),
            bh(OWN, BLACKHOLE_METRIC),
        ];
        let p = plan(&found, network, own, true);
        assert_eq!(p.add, Some(own));
        assert_eq!(
            p.del,
            [bh("fd00:10:244:3::/64", BLACKHOLE_METRIC)],
            "the IPv4 one is not this family's"
        );
    }

    #[test]
    fn other_blackholes_are_left_alone() {
        let found = [
            bh(NETWORK, 0),                        // catch-all for the whole network
            bh(NETWORK, BLACKHOLE_METRIC),         // same, at our metric
            bh("10.244.7.0/25", BLACKHOLE_METRIC), // not lease-shaped
            bh("10.96.0.0/24", BLACKHOLE_METRIC),  // outside the network
            bh("10.244.3.0/24", 0),                // flanneld's form, someone else's subnet
            bh(OWN, 100),                          // someone's own metric
        ];
        let p = plan(&found, net(NETWORK), net(OWN), true);
        assert_eq!(p.add, Some(net(OWN)));
        assert!(p.del.is_empty(), "{:?}", p.del);
    }
}
