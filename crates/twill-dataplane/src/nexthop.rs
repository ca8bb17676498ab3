//! Nexthop objects (`ip nexthop`, RTM_*NEXTHOP): one per peer, so that each peer route
//! refers to its own object by id.
//!
//! Why: the kernel hashes IPv4 route infos by device, protocol, scope, source and metric,
//! not by gateway, so every `<subnet> via <peer> dev flannel.1 onlink` route lands in one
//! hash chain and each insertion walks all the others (quadratic; at 10 000 peers most of
//! the daemon's time is spent in `fib_create_info`). A route by nexthop id hashes by that
//! id and the chain stays short.
//!
//! Written by hand because netlink-packet-route 0.34 has no nexthop messages; the wire
//! format is small (an 8-byte `nhmsg` and a few u32/address attributes) and sent on its
//! own netlink-proto connection next to rtnetlink's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::StreamExt;
use rtnetlink::packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NlaBuffer, NlasIterator, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::proto::{self, ConnectionHandle};

use crate::errno::{errno, EEXIST};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, SocketAddr};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RTNH_F_ONLINK: u32 = 4;
const RTPROT_STATIC: u8 = 4;
/// rtnetlink multicast group of nexthop changes.
const RTNLGRP_NEXTHOP: u32 = 32;
const NHMSG_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Del,
    Get,
}

/// One nexthop message: `struct nhmsg` and the attributes we use. A group or blackhole
/// nexthop is read with `oif` and `gateway` unset, so it never looks like one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopMessage {
    pub kind: Kind,
    pub family: u8,
    pub flags: u32,
    pub id: Option<u32>,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
}

impl NexthopMessage {
    fn new(kind: Kind) -> Self {
        NexthopMessage {
            kind,
            family: 0,
            flags: 0,
            id: None,
            oif: None,
            gateway: None,
        }
    }

    fn attrs(&self) -> impl Iterator<Item = (u16, Vec<u8>)> {
        [
            self.id.map(|v| (NHA_ID, v.to_ne_bytes().to_vec())),
            self.oif.map(|v| (NHA_OIF, v.to_ne_bytes().to_vec())),
            // Network byte order, as every address in rtnetlink.
            self.gateway.map(|v| {
                let octets = match v {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                (NHA_GATEWAY, octets)
            }),
        ]
        .into_iter()
        .flatten()
    }
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        match self.kind {
            Kind::New => RTM_NEWNEXTHOP,
            Kind::Del => RTM_DELNEXTHOP,
            Kind::Get => RTM_GETNEXTHOP,
        }
    }

    fn buffer_len(&self) -> usize {
        // Each attribute: 4-byte header + a 4- or 16-byte value, already aligned.
        NHMSG_LEN + self.attrs().map(|(_, v)| 4 + v.len()).sum::<usize>()
    }

    fn serialize(&self, buf: &mut [u8]) {
        // nh_family, nh_scope (universe), nh_protocol, resvd, nh_flags.
        buf[0] = self.family;
        buf[1] = 0;
        buf[2] = if self.kind == Kind::New {
            RTPROT_STATIC
        } else {
            0
        };
        buf[3] = 0;
        buf[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        let mut at = NHMSG_LEN;
        for (kind, value) in self.attrs() {
            let len = 4 + value.len();
            buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
            buf[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
            buf[at + 4..at + len].copy_from_slice(&value);
            at += len;
        }
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let kind = match header.message_type {
            RTM_NEWNEXTHOP => Kind::New,
            RTM_DELNEXTHOP => Kind::Del,
            t => {
                return Err(DecodeError::from(format!(
                    "not a nexthop message: type {t}"
                )))
            }
        };
        if payload.len() < NHMSG_LEN {
            return Err(DecodeError::from("nexthop message shorter than nhmsg"));
        }
        let mut m = NexthopMessage::new(kind);
        m.family = payload[0];
        m.flags = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
        let u32_of = |v: &[u8]| -> Result<u32, DecodeError> {
            Ok(u32::from_ne_bytes(v.try_into().map_err(|_| {
                DecodeError::from("nexthop attribute is not 4 bytes")
            })?))
        };
        let mut special = false;
        for nla in NlasIterator::new(&payload[NHMSG_LEN..]) {
            let nla: NlaBuffer<&[u8]> = nla?;
            let v = nla.value();
            match nla.kind() {
                NHA_ID => m.id = Some(u32_of(v)?),
                NHA_OIF => m.oif = Some(u32_of(v)?),
                NHA_GATEWAY => {
                    m.gateway = match v.len() {
                        4 => <[u8; 4]>::try_from(v)
                            .ok()
                            .map(|b| Ipv4Addr::from(b).into()),
                        16 => <[u8; 16]>::try_from(v)
                            .ok()
                            .map(|b| Ipv6Addr::from(b).into()),
                        _ => None,
                    }
                }
                NHA_GROUP | NHA_BLACKHOLE => special = true,
                _ => {}
            }
        }
        if special {
            m.oif = None;
            m.gateway = None;
        }
        Ok(m)
    }
}

/// A nexthop on our device: `id via gateway dev <oif> onlink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    /// Another device's nexthop has the id: someone else's, never overwritten.
    #[error("the id is held by a nexthop on another device (ifindex {oif}); left alone")]
    Taken { oif: u32 },
    /// It existed, then was gone when looked at.
    #[error("the id was in use, then gone; the next pass adds it")]
    Vanished,
    #[error(transparent)]
    Netlink(#[from] rtnetlink::Error),
}

/// The connection nexthop requests go through.
#[derive(Clone)]
pub struct NexthopConn {
    handle: ConnectionHandle<NexthopMessage>,
}

fn netlink_error(e: rtnetlink::packet_core::ErrorMessage) -> rtnetlink::Error {
    rtnetlink::Error::NetlinkError(e)
}

impl NexthopConn {
    /// Opens it in the calling thread's network namespace; needs a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (conn, handle, _) = proto::new_connection::<NexthopMessage>(NETLINK_ROUTE)?;
        tokio::spawn(conn);
        Ok(NexthopConn { handle })
    }

    async fn request(
        &self,
        msg: NexthopMessage,
        flags: u16,
    ) -> Result<Vec<NexthopMessage>, rtnetlink::Error> {
        let mut out = Vec::new();
        self.request_each(msg, flags, |m| out.push(m)).await?;
        Ok(out)
    }

    /// Calls `f` with each reply as it streams in (a 10 000-entry dump is not held whole).
    async fn request_each(
        &self,
        msg: NexthopMessage,
        flags: u16,
        mut f: impl FnMut(NexthopMessage),
    ) -> Result<(), rtnetlink::Error> {
        let mut req =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.header.flags = NLM_F_REQUEST | flags;
        req.finalize();
        let mut replies = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|_| rtnetlink::Error::RequestFailed)?;
        while let Some(m) = replies.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(m) => f(m),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(netlink_error(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Calls `f` with each nexthop on device `oif` (filtered by the kernel too).
    pub async fn each_on(
        &self,
        oif: u32,
        mut f: impl FnMut(Nexthop),
    ) -> Result<(), rtnetlink::Error> {
        let mut m = NexthopMessage::new(Kind::Get);
        m.oif = Some(oif);
        self.request_each(m, NLM_F_DUMP, |m| {
            if let (Some(id), true) = (m.id, m.oif == Some(oif)) {
                f(Nexthop {
                    id,
                    gateway: m.gateway,
                })
            }
        })
        .await
    }

    async fn get(&self, id: u32) -> Result<Option<NexthopMessage>, rtnetlink::Error> {
        let mut m = NexthopMessage::new(Kind::Get);
        m.id = Some(id);
        Ok(self.request(m, 0).await?.into_iter().next())
    }

    fn onlink(id: u32, gateway: IpAddr, oif: u32) -> NexthopMessage {
        let mut m = NexthopMessage::new(Kind::New);
        m.family = if gateway.is_ipv4() { AF_INET } else { AF_INET6 };
        m.flags = RTNH_F_ONLINK;
        m.id = Some(id);
        m.oif = Some(oif);
        m.gateway = Some(gateway);
        m
    }

    /// `ip nexthop add id <id> via <gateway> dev <oif> onlink`. An id already in use is
    /// taken over only when it is on `oif` (ours, perhaps with a stale gateway); one on
    /// another device belongs to someone else and is an error, never overwritten.
    pub async fn ensure(&self, id: u32, gateway: IpAddr, oif: u32) -> Result<(), EnsureError> {
        let excl = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match self.request(Self::onlink(id, gateway, oif), excl).await {
            Ok(_) => return Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(e.into()),
        };
        match self.get(id).await? {
            Some(m) if m.oif == Some(oif) && m.gateway == Some(gateway) => Ok(()),
            Some(m) if m.oif == Some(oif) => {
                let replace = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
                self.request(Self::onlink(id, gateway, oif), replace)
                    .await?;
                Ok(())
            }
            Some(m) => Err(EnsureError::Taken {
                oif: m.oif.unwrap_or(0),
            }),
            None => Err(EnsureError::Vanished),
        }
    }

    /// `ip nexthop del id <id>`; the kernel drops the routes that use it too.
    pub async fn delete(&self, id: u32) -> Result<(), rtnetlink::Error> {
        let mut m = NexthopMessage::new(Kind::Del);
        m.id = Some(id);
        self.request(m, NLM_F_ACK).await.map(drop)
    }
}

/// Nexthop change notifications, each as (deleted, the device it is on; `None`: a group
/// or blackhole). Deleting a nexthop drops its routes without any route notification, so
/// a monitor that wants to see that must listen here.
pub fn watch() -> std::io::Result<impl futures::Stream<Item = NexthopEvent> + Send + Unpin> {
    let (mut conn, _handle, messages) = proto::new_connection::<NexthopMessage>(NETLINK_ROUTE)?;
    let socket = conn.socket_mut().socket_mut();
    // Unbound, its port id is 0, the kernel's own, and the kernel skips it when it
    // broadcasts.
    socket.bind_auto()?;
    socket.add_membership(RTNLGRP_NEXTHOP)?;
    if let Err(e) = crate::netlink::rcvbuf::grow(socket, crate::netlink::rcvbuf::LISTENER_BYTES) {
        tracing::warn!("nexthop listener's receive buffer left as it was ({e})");
    }
    tokio::spawn(conn);
    Ok(messages.filter_map(|(m, _)| {
        futures::future::ready(match m.payload {
            NetlinkPayload::InnerMessage(m) => Some(NexthopEvent::Changed {
                deleted: matches!(m.kind, Kind::Del),
                oif: m.oif,
            }),
            NetlinkPayload::Overrun(_) => Some(NexthopEvent::Lost),
            _ => None,
        })
    }))
}

/// What the nexthop listener hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NexthopEvent {
    /// A nexthop added, replaced or deleted, with its device where it has one.
    Changed { deleted: bool, oif: Option<u32> },
    /// The kernel dropped notifications it could not queue: anything may have changed.
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_iproute2() {
        // `ip nexthop add id 7 via 10.244.1.0 dev <3> onlink`, body as strace shows it.
        let m = NexthopConn::onlink(7, "10.244.1.0".parse().unwrap(), 3);
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        let mut want = vec![2, 0, RTPROT_STATIC, 0];
        want.extend(RTNH_F_ONLINK.to_ne_bytes());
        want.extend(8u16.to_ne_bytes());
        want.extend(NHA_ID.to_ne_bytes());
        want.extend(7u32.to_ne_bytes());
        want.extend(8u16.to_ne_bytes());
        want.extend(NHA_OIF.to_ne_bytes());
        want.extend(3u32.to_ne_bytes());
        want.extend(8u16.to_ne_bytes());
        want.extend(NHA_GATEWAY.to_ne_bytes());
        want.extend([10, 244, 1, 0]);
        assert_eq!(buf, want);
    }

    /// The 32-byte body iproute2 6.1 sent for `ip nexthop add id 7 via 10.244.1.0 dev x0
    /// onlink proto static` (x0 had index 3), captured with `strace -e write=3`. iproute2
    /// orders the attributes id, gateway, oif; we write id, oif, gateway, which the kernel
    /// takes alike: the header must match byte for byte, the attributes as a set.
    const IPROUTE2_BODY: [u8; 32] = [
        0x02, 0x00, 0x04, 0x00, 0x04, 0x00, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00,
        0x00, 0x08, 0x00, 0x06, 0x00, 0x0a, 0xf4, 0x01, 0x00, 0x08, 0x00, 0x05, 0x00, 0x03, 0x00,
        0x00, 0x00,
    ];

    #[test]
    #[cfg(target_endian = "little")] // captured on x86_64
    fn matches_bytes_captured_from_iproute2() {
        let ours = NexthopConn::onlink(7, "10.244.1.0".parse().unwrap(), 3);
        let mut h = NetlinkHeader::default();
        h.message_type = RTM_NEWNEXTHOP;
        assert_eq!(
            NexthopMessage::deserialize(&h, &IPROUTE2_BODY).unwrap(),
            ours
        );
        let mut buf = vec![0u8; ours.buffer_len()];
        ours.serialize(&mut buf);
        assert_eq!(buf.len(), IPROUTE2_BODY.len());
        assert_eq!(buf[..NHMSG_LEN], IPROUTE2_BODY[..NHMSG_LEN]);
        let attrs = |b: &[u8]| {
            let mut v: Vec<Vec<u8>> = b[NHMSG_LEN..].chunks(8).map(<[u8]>::to_vec).collect();
            v.sort();
            v
        };
        assert_eq!(attrs(&buf), attrs(&IPROUTE2_BODY));
    }

    #[test]
    fn decodes_what_it_encodes_and_hides_groups() {
        let m = NexthopConn::onlink(9, "10.0.3.0".parse().unwrap(), 4);
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        let mut h = NetlinkHeader::default();
        h.message_type = RTM_NEWNEXTHOP;
        assert_eq!(NexthopMessage::deserialize(&h, &buf).unwrap(), m);

        // IPv6: a 16-byte gateway and AF_INET6, both ways.
        let m6 = NexthopConn::onlink(0xf000_0002, "fd00:10:0:2::".parse().unwrap(), 4);
        let mut buf6 = vec![0u8; m6.buffer_len()];
        m6.serialize(&mut buf6);
        assert_eq!((buf6[0], buf6.len()), (AF_INET6, NHMSG_LEN + 8 + 8 + 20));
        assert_eq!(NexthopMessage::deserialize(&h, &buf6).unwrap(), m6);

        // The same with NHA_GROUP (one member, id 9, weight 0) is a group, never ours.
        buf.extend(12u16.to_ne_bytes());
        buf.extend(NHA_GROUP.to_ne_bytes());
        buf.extend(9u32.to_ne_bytes());
        buf.extend([0u8; 4]);
        let g = NexthopMessage::deserialize(&h, &buf).unwrap();
        assert_eq!((g.id, g.oif, g.gateway), (Some(9), None, None));

        h.message_type = 24; // RTM_NEWROUTE
        assert!(NexthopMessage::deserialize(&h, &buf).is_err());
    }
}
