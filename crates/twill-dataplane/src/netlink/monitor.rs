//! The netlink monitor: a deleted device at once, one of our entries removed at once (so
//! it is repaired in milliseconds, not at the next resync), and whether anything touched
//! our entries since the last pass (so an idle pass can skip reading the kernel).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};

use crate::change::ChangeFlag;
use crate::nexthop::{self};

use super::link::parse_link;

/// What a netlink monitor saw happen to our device: its deletion (repaired at once, where
/// flannel #869 never replays peers) and whether anything touched its neighbour, FDB or
/// route entries since the last look (a periodic pass with nothing touched can skip
/// reading the kernel, which at 10 000 peers is a 30 000-entry dump).
pub struct DeviceMonitor {
    pub deleted: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// The device's ifindex: set once at start, then followed through RTM_NEWLINK; while
    /// 0 every entry change counts.
    index: Arc<AtomicU32>,
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

impl DeviceMonitor {
    pub fn set_index(&self, index: u32) {
        self.index.store(index, Ordering::SeqCst);
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

/// Starts a monitor on the link, neighbour, IPv4 route and nexthop groups for the device
/// `name`.
pub fn watch_device(name: String) -> std::io::Result<DeviceMonitor> {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    use rtnetlink::MulticastGroup as G;
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        G::Link,
        G::Neigh,
        G::Ipv4Route,
        G::Ipv4Ifaddr,
        G::Ipv6Ifaddr,
    ])?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let index = Arc::new(AtomicU32::new(0));
    let underlay = Arc::new(AtomicU32::new(0));
    let entries = Arc::new(ChangeFlag::default());
    let removed = Arc::new(ChangeFlag::default());
    let underlay_changed = Arc::new(ChangeFlag::default());
    // Deleting a nexthop drops its routes without a route notification.
    let mut nexthop_events = nexthop::watch()?;
    let (idx, seen, gone) = (index.clone(), entries.clone(), removed.clone());
    tokio::spawn(async move {
        while let Some((deleted, oif)) = nexthop_events.next().await {
            let known = idx.load(Ordering::SeqCst);
            if oif.is_some_and(|i| known == 0 || i == known) {
                seen.mark();
                if deleted {
                    gone.mark();
                }
            }
        }
        seen.mark_broken();
    });
    let (idx, ul, seen, gone, moved) = (
        index.clone(),
        underlay.clone(),
        entries.clone(),
        removed.clone(),
        underlay_changed.clone(),
    );
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let ours = |i: u32| {
                let known = idx.load(Ordering::SeqCst);
                known == 0 || i == known
            };
            let route_ours = |r: &RouteMessage| {
                // A route by nexthop id carries no device outside compat mode: count it.
                r.attributes.iter().any(|a| match a {
                    RouteAttribute::Oif(i) => ours(*i) || *i == ul.load(Ordering::SeqCst),
                    RouteAttribute::NhId(_) => true,
                    _ => false,
                })
            };
            let not_ours = |i: u32| i != idx.load(Ordering::SeqCst);
            let host_changed = match &m {
                M::NewLink(l) | M::DelLink(l) => parse_link(l).name != name,
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
                M::DelAddress(a) => (false, idx.load(Ordering::SeqCst) == a.header.index),
                M::NewLink(l) => {
                    // Also how a recreated device's new index becomes known. A change to
                    // our device (taken down, resized) is repaired at once; the pass that
                    // follows one of our own changes finds nothing to do.
                    let ours = parse_link(l).name == name;
                    if ours {
                        idx.store(l.header.index, Ordering::SeqCst);
                    }
                    (ours, ours)
                }
                M::DelLink(l) => {
                    let gone = parse_link(l).name == name;
                    if gone && tx.send(()).is_err() {
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
    Ok(DeviceMonitor {
        deleted: rx,
        index,
        underlay,
        entries,
        removed,
        underlay_changed,
    })
}
