//! The netlink monitor: a deleted device at once, one of our entries removed at once (so
//! it is repaired in milliseconds, not at the next resync), and whether anything touched
//! our entries since the last pass (so an idle pass can skip reading the kernel).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::sys::AsyncSocket;
use tracing::warn;

use crate::change::ChangeFlag;
use crate::nexthop::{self, NexthopEvent};

use super::link::parse_link;

/// What a netlink monitor saw happen to our device: its deletion (repaired at once, where
/// flannel #869 never replays peers) and whether anything touched its neighbour, FDB or
/// route entries since the last look (a periodic pass with nothing touched can skip
/// reading the kernel, which at 10 000 peers is a 30 000-entry dump).
pub struct DeviceMonitor {
    /// The name of each of our devices deleted.
    pub deleted: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Our devices (one per overlay family) by name, with their ifindex: set by the node,
    /// then followed through RTM_NEWLINK; while one is 0 every entry change counts.
    devices: Arc<Devices>,
    /// The underlay's ifindex (0: none), whose route changes count too.
    underlay: Arc<AtomicU32>,
    entries: Arc<ChangeFlag>,
    /// Raised when something removed (or took down, or resized) what we keep on the
    /// device: a route, neighbour or FDB entry, a nexthop, its address; the daemon
    /// repairs at once. Additions only raise `entries`: our own writes are additions.
    removed: Arc<ChangeFlag>,
    /// Raised when another link appears, goes or changes, or an address is added to or
    /// removed from one: the underlay the node chose may have moved.
    underlay_changed: Arc<ChangeFlag>,
}

/// The devices a monitor watches. Names change only on a reload (a new VNI, IPv6 turned
/// on or off), so a lock held for a lookup is never contended for long.
#[derive(Default)]
struct Devices(Mutex<Vec<(String, u32)>>);

impl Devices {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<(String, u32)>) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Whether an entry on `index` may be ours.
    fn ours(&self, index: u32) -> bool {
        self.with(|d| d.iter().any(|(_, i)| *i == 0 || *i == index))
    }

    fn is_ours(&self, index: u32) -> bool {
        self.with(|d| d.iter().any(|(_, i)| *i == index))
    }

    fn named(&self, name: &str) -> bool {
        self.with(|d| d.iter().any(|(n, _)| n == name))
    }

    fn learn(&self, name: &str, index: u32) {
        self.with(|d| {
            for (n, i) in d.iter_mut() {
                if n == name {
                    *i = index;
                }
            }
        })
    }
}

impl DeviceMonitor {
    /// The devices to watch, with their ifindex when known (else 0 until RTM_NEWLINK).
    pub fn set_devices(&self, devices: &[(String, Option<u32>)]) {
        self.devices.with(|d| {
            let known: Vec<(String, u32)> = d.clone();
            *d = devices
                .iter()
                .map(|(n, i)| {
                    let seen = known.iter().find(|(k, _)| k == n).map(|(_, i)| *i);
                    (n.clone(), i.or(seen).unwrap_or(0))
                })
                .collect();
        })
    }

    pub fn set_underlay_index(&self, index: u32) {
        self.underlay.store(index, Ordering::SeqCst);
    }

    /// Whether our device's entries may have changed since the last call.
    pub fn take_touched(&self) -> bool {
        self.entries.take()
    }

    /// Raised when something of ours was removed; `marked()` waits for it.
    pub fn removed_flag(&self) -> Arc<ChangeFlag> {
        self.removed.clone()
    }

    /// Raised when the host's links or addresses changed (see the field).
    pub fn underlay_flag(&self) -> Arc<ChangeFlag> {
        self.underlay_changed.clone()
    }
}

/// Starts a monitor on the link, neighbour, route and nexthop groups for our devices
/// `names` (see `DeviceMonitor::set_devices`).
pub fn watch_devices(names: &[(String, Option<u32>)]) -> std::io::Result<DeviceMonitor> {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    use rtnetlink::MulticastGroup as G;
    let (mut conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        G::Link,
        G::Neigh,
        G::Ipv4Route,
        G::Ipv6Route,
        G::Ipv4Ifaddr,
        G::Ipv6Ifaddr,
    ])?;
    if let Err(e) = super::rcvbuf::grow(
        conn.socket_mut().socket_ref(),
        super::rcvbuf::LISTENER_BYTES,
    ) {
        warn!("monitor's receive buffer left as it was ({e}): bursts overrun it sooner");
    }
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let devices = Arc::new(Devices::default());
    let underlay = Arc::new(AtomicU32::new(0));
    let entries = Arc::new(ChangeFlag::default());
    let removed = Arc::new(ChangeFlag::default());
    let underlay_changed = Arc::new(ChangeFlag::default());
    // Deleting a nexthop drops its routes without a route notification.
    let mut nexthop_events = nexthop::watch()?;
    let (devs, seen, gone) = (devices.clone(), entries.clone(), removed.clone());
    tokio::spawn(async move {
        while let Some(ev) = nexthop_events.next().await {
            let (touched, lost) = match ev {
                NexthopEvent::Changed { deleted, oif } => {
                    let ours = oif.is_some_and(|i| devs.ours(i));
                    (ours, ours && deleted)
                }
                NexthopEvent::Lost => {
                    warn!("nexthop notifications lost (netlink overrun); checking the kernel");
                    (true, true)
                }
            };
            if touched {
                seen.mark();
            }
            if lost {
                gone.mark();
            }
        }
        seen.mark_broken();
    });
    let (devs, ul, seen, gone, moved) = (
        devices.clone(),
        underlay.clone(),
        entries.clone(),
        removed.clone(),
        underlay_changed.clone(),
    );
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let m = match msg.payload {
                NetlinkPayload::InnerMessage(m) => m,
                // What the kernel dropped may have been one of our entries deleted, our
                // device gone or the underlay moved: a full pass reads the kernel for
                // all of it (the device's own deletion included), where waiting for the
                // next change, or skipping an untouched resync, would leave it.
                NetlinkPayload::Overrun(_) => {
                    warn!("link/route/neighbour notifications lost (netlink overrun); checking the kernel");
                    seen.mark();
                    gone.mark();
                    moved.mark();
                    continue;
                }
                _ => continue,
            };
            let ours = |i: u32| devs.ours(i);
            let route_ours = |r: &RouteMessage| {
                // A route by nexthop id carries no device outside compat mode: count it.
                r.attributes.iter().any(|a| match a {
                    RouteAttribute::Oif(i) => ours(*i) || *i == ul.load(Ordering::SeqCst),
                    RouteAttribute::NhId(_) => true,
                    _ => false,
                })
            };
            let not_ours = |i: u32| !devs.is_ours(i);
            let host_changed = match &m {
                M::NewLink(l) | M::DelLink(l) => !devs.named(&parse_link(l).name),
                M::NewAddress(a) | M::DelAddress(a) => not_ours(a.header.index),
                _ => false,
            };
            if host_changed {
                moved.mark();
            }
            let (touched, lost) = match &m {
                M::NewNeighbour(n) => (ours(n.header.ifindex), false),
                M::DelNeighbour(n) => (ours(n.header.ifindex), ours(n.header.ifindex)),
                M::NewRoute(r) => (route_ours(r), false),
                M::DelRoute(r) => (route_ours(r), route_ours(r)),
                M::DelAddress(a) => (false, devs.is_ours(a.header.index)),
                M::NewLink(l) => {
                    // Also how a recreated device's new index becomes known. A change to
                    // our device (taken down, resized) is repaired at once; the pass that
                    // follows one of our own changes finds nothing to do.
                    let name = parse_link(l).name;
                    let ours = devs.named(&name);
                    if ours {
                        devs.learn(&name, l.header.index);
                    }
                    (ours, ours)
                }
                M::DelLink(l) => {
                    let name = parse_link(l).name;
                    let gone = devs.named(&name);
                    if gone && tx.send(name).is_err() {
                        break;
                    }
                    (gone, false)
                }
                _ => (false, false),
            };
            if touched {
                seen.mark();
            }
            if lost {
                gone.mark();
            }
        }
        seen.mark_broken();
    });
    let monitor = DeviceMonitor {
        deleted: rx,
        devices,
        underlay,
        entries,
        removed,
        underlay_changed,
    };
    monitor.set_devices(names);
    Ok(monitor)
}
