//! The netlink monitor: a deleted device at once, and whether anything touched our
//! entries since the last pass (so an idle pass can skip reading the kernel).

use super::*;

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
}

/// Starts a monitor on the link, neighbour, IPv4 route and nexthop groups for the device
/// `name`.
pub fn watch_device(name: String) -> std::io::Result<DeviceMonitor> {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    use rtnetlink::MulticastGroup as G;
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[G::Link, G::Neigh, G::Ipv4Route])?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let index = Arc::new(AtomicU32::new(0));
    let underlay = Arc::new(AtomicU32::new(0));
    let entries = Arc::new(ChangeFlag::default());
    // Deleting a nexthop drops its routes without a route notification.
    let mut nexthop_events = nexthop::watch()?;
    let (idx, seen) = (index.clone(), entries.clone());
    tokio::spawn(async move {
        while let Some(oif) = nexthop_events.next().await {
            let known = idx.load(Ordering::SeqCst);
            if oif.is_some_and(|i| known == 0 || i == known) {
                seen.mark();
            }
        }
        seen.mark_broken();
    });
    let (idx, ul, seen) = (index.clone(), underlay.clone(), entries.clone());
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let ours = |i: u32| {
                let known = idx.load(Ordering::SeqCst);
                known == 0 || i == known
            };
            let touched = match &m {
                M::NewNeighbour(n) | M::DelNeighbour(n) => ours(n.header.ifindex),
                // A route by nexthop id carries no device outside compat mode: count it.
                M::NewRoute(r) | M::DelRoute(r) => r.attributes.iter().any(|a| match a {
                    RouteAttribute::Oif(i) => ours(*i) || *i == ul.load(Ordering::SeqCst),
                    RouteAttribute::NhId(_) => true,
                    _ => false,
                }),
                M::NewLink(l) => {
                    // Also how a recreated device's new index becomes known.
                    let ours = parse_link(l).name == name;
                    if ours {
                        idx.store(l.header.index, Ordering::SeqCst);
                    }
                    ours
                }
                M::DelLink(l) => {
                    let gone = parse_link(l).name == name;
                    if gone && tx.send(()).is_err() {
                        break;
                    }
                    gone
                }
                _ => false,
            };
            if touched {
                seen.mark();
            }
        }
        seen.mark_broken();
    });
    Ok(DeviceMonitor {
        deleted: rx,
        index,
        underlay,
        entries,
    })
}
