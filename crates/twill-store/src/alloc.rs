//! Choosing a subnet: pure, so every rule (reuse by PublicIP, reservations, previous
//! subnet, uniform random free subnet, exhaustion) is tested without etcd.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rand::Rng;
use twill_config::{addr_to_u128, interval, NetConf, SubnetRange};

use crate::lease::{LeaseKey, StoredLease};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSource {
    /// A lease with TTL that already carries our PublicIP.
    OwnLease,
    /// A TTL-less key carrying our PublicIP: an operator pinned this subnet to us.
    Reservation,
    /// The subnet in the previous subnet.env, still free.
    PreviousSubnet,
    /// A uniformly random free subnet.
    Random,
    /// Not ours to choose: Kubernetes assigned it (node spec.podCIDR).
    Assigned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Rewrite an existing key in place (compare-and-swap on `mod_revision`).
    Reuse {
        key: LeaseKey,
        mod_revision: i64,
        source: PlanSource,
    },
    /// Create a key that must not exist yet.
    Create { key: LeaseKey, source: PlanSource },
}

impl Plan {
    pub fn key(&self) -> &LeaseKey {
        match self {
            Plan::Reuse { key, .. } | Plan::Create { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "no free subnet: Network {network} with SubnetLen {subnet_len} between SubnetMin {min} and SubnetMax {max} has {capacity} subnets and {leases} leases (including reservations) are held; widen the range or remove stale leases"
    )]
    Exhausted {
        network: IpNetwork,
        subnet_len: u8,
        min: IpAddr,
        max: IpAddr,
        capacity: u128,
        leases: usize,
    },
}

/// Decides which subnet to hold. `exclude` lists keys lost to a concurrent writer in this
/// acquisition, so a retry goes elsewhere instead of fighting for the same key.
/// Also returns our own (by PublicIP) TTL leases that no longer fit the configuration:
/// the caller deletes them so they don't linger for a day.
pub fn plan(
    conf: &NetConf,
    leases: &[StoredLease],
    node_ip: IpAddr,
    previous: LeaseKey,
    exclude: &HashSet<LeaseKey>,
    rng: &mut impl Rng,
) -> Result<(Plan, Vec<StoredLease>), AllocError> {
    let ours = |l: &&StoredLease| {
        !exclude.contains(&l.key) && l.attrs.as_ref().is_some_and(|a| a.node_ip() == node_ip)
    };
    let fits = |l: &StoredLease| conf.fits(l.key.v4.as_ref(), l.key.v6.as_ref());
    let stale: Vec<StoredLease> = leases
        .iter()
        .filter(ours)
        .filter(|l| !l.is_reservation() && !fits(l))
        .cloned()
        .collect();
    // A reservation for us wins over a TTL lease: it is the operator's explicit choice.
    let mut own: Vec<&StoredLease> = leases.iter().filter(ours).filter(|l| fits(l)).collect();
    own.sort_by_key(|l| !l.is_reservation());
    if let Some(l) = own.first() {
        let source = if l.is_reservation() {
            PlanSource::Reservation
        } else {
            PlanSource::OwnLease
        };
        let plan = Plan::Reuse {
            key: l.key,
            mod_revision: l.mod_revision,
            source,
        };
        return Ok((plan, stale));
    }

    let mut all_previous = true;
    let mut pick = |range: &Option<SubnetRange>, prev: Option<IpNetwork>, v4: bool| {
        let Some(range) = range else {
            return Ok(None);
        };
        let family = |k: &LeaseKey| if v4 { k.v4 } else { k.v6 };
        let occupied_by = |skip_stale: bool| {
            merged(
                leases
                    .iter()
                    .filter(|l| !(skip_stale && stale.iter().any(|s| s.key == l.key)))
                    .filter_map(|l| family(&l.key))
                    .chain(exclude.iter().filter_map(family))
                    .map(|n| interval(&n)),
            )
        };
        let occupied = occupied_by(false);
        // Our stale leases are deleted before the new one is written, so the previous
        // subnet one of them holds is ours to take again: IPv6 turned on keeps the IPv4
        // subnet, and the pods on it. A random pick stays clear of them all the same.
        if let Some(p) = prev {
            if range.fits(&p) && !overlaps(&occupied_by(true), interval(&p)) {
                return Ok(Some(p));
            }
        }
        all_previous = false;
        random_free(range, &occupied, rng)
            .map(Some)
            .ok_or(AllocError::Exhausted {
                network: range.network,
                subnet_len: range.subnet_len,
                min: range.min,
                max: range.max,
                capacity: range.count(),
                leases: leases.len(),
            })
    };
    let v4 = pick(&conf.ipv4, previous.v4, true)?;
    let v6 = pick(&conf.ipv6, previous.v6, false)?;
    let source = if all_previous {
        PlanSource::PreviousSubnet
    } else {
        PlanSource::Random
    };
    Ok((
        Plan::Create {
            key: LeaseKey { v4, v6 },
            source,
        },
        stale,
    ))
}

/// Sorted, non-overlapping inclusive intervals.
fn merged(it: impl Iterator<Item = (u128, u128)>) -> Vec<(u128, u128)> {
    let mut v: Vec<(u128, u128)> = it.collect();
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn overlaps(occupied: &[(u128, u128)], (s, e): (u128, u128)) -> bool {
    let i = occupied.partition_point(|&(_, end)| end < s);
    occupied.get(i).is_some_and(|&(start, _)| start <= e)
}

/// The free gaps between occupied intervals, clipped to the leasable range, each with how
/// many aligned subnets fit inside. Walking gaps instead of subnets keeps this
/// O(leases) even for a /64-per-node IPv6 range with 2^64 candidates.
fn gaps(range: &SubnetRange, occupied: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let size = range.subnet_size();
    let lo = addr_to_u128(range.min);
    let hi = addr_to_u128(range.max) + (size - 1);
    let mut out = Vec::new();
    let mut cursor = Some(lo);
    let mut push = |gs: u128, ge: u128| {
        // gs is aligned by construction; count subnets [gs, gs+size-1] ⊆ [gs, ge].
        let Some(first) = gs.checked_next_multiple_of(size) else {
            return;
        };
        if first <= ge && ge - first >= size - 1 {
            out.push((first, (ge - first - (size - 1)) / size + 1));
        }
    };
    for &(s, e) in occupied {
        let Some(c) = cursor else { break };
        if e < c {
            continue;
        }
        if s > hi {
            break;
        }
        if s > c {
            push(c, s - 1);
        }
        cursor = e.checked_add(1);
    }
    if let Some(c) = cursor {
        if c <= hi {
            push(c, hi);
        }
    }
    out
}

fn random_free(
    range: &SubnetRange,
    occupied: &[(u128, u128)],
    rng: &mut impl Rng,
) -> Option<IpNetwork> {
    let gaps = gaps(range, occupied);
    let total: u128 = gaps.iter().map(|g| g.1).sum();
    if total == 0 {
        return None;
    }
    let mut k = rng.random_range(0..total);
    for (first, count) in gaps {
        if k < count {
            return Some(range.subnet_at(first + k * range.subnet_size()));
        }
        k -= count;
    }
    unreachable!("k < total")
}

#[cfg(test)]
mod tests;
