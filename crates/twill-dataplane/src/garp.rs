//! A gratuitous ARP for the node's underlay address after the underlay moved. A host with
//! two NICs on one segment answers ARP for either's address from both (ARP flux, the
//! default `arp_ignore=0`), so a peer may hold our address at the other NIC's MAC; when
//! that NIC goes, the peer keeps sending VXLAN to a MAC nobody has until its entry ages
//! out (~30 s). An ARP request whose sender and target are our address makes Linux peers
//! replace an entry they have at once, whatever their `arp_accept`.
//!
//! IPv6 has no ARP flux (a node answers a solicitation only on the interface holding the
//! address), but the same stale entry follows a NIC made again with a new MAC, or an
//! address moved to another NIC: a peer holding a reachable entry keeps sending to the old
//! MAC for up to 45 s, then probes it. The equivalent is an unsolicited neighbour
//! advertisement (RFC 4861 §7.2.6) with the Override flag, which makes Linux peers
//! replace the address they hold.
//!
//! Written by hand over an AF_PACKET socket (and a raw ICMPv6 one): one short message and a
//! few syscalls, which no well-kept crate offers on its own (the packet crates bring a
//! whole capture stack).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The ARP request announcing `ip` at `mac` (pure): sender and target protocol address
/// both `ip`, target hardware address zero (RFC 5227's announcement).
pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut m = [0u8; 28];
    m[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    m[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    m[4] = 6;
    m[5] = 4;
    m[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    m[8..14].copy_from_slice(&mac);
    m[14..18].copy_from_slice(&ip.octets());
    m[24..28].copy_from_slice(&ip.octets());
    m
}

/// The unsolicited neighbour advertisement of `ip` at `mac` (pure): ICMPv6 type 136 with
/// only the Override flag (not a router, not solicited), the target, and a target
/// link-layer address option. The checksum is left zero: the kernel fills it in on a raw
/// ICMPv6 socket.
pub fn advertisement(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    const NEIGHBOR_ADVERTISEMENT: u8 = 136;
    const OVERRIDE: u8 = 0x20;
    const TARGET_LINK_LAYER_ADDRESS: u8 = 2;
    let mut m = [0u8; 32];
    m[0] = NEIGHBOR_ADVERTISEMENT;
    m[4] = OVERRIDE;
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = TARGET_LINK_LAYER_ADDRESS;
    m[25] = 1; // in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A packet socket for `proto` bound to interface `ifindex`, and that interface's MAC.
fn packet_socket(ifindex: u32, proto: u16) -> io::Result<(OwnedFd, libc::sockaddr_ll, [u8; 6])> {
    let proto = proto.to_be();
    let sll_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: a plain socket(2); the descriptor is owned (and closed) by OwnedFd at once.
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        );
        check(raw)?;
        OwnedFd::from_raw_fd(raw)
    };
    // SAFETY: sockaddr_ll is plain data, zeroed then filled; each call gets its true size.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as libc::c_int;
        let addr = (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>();
        check(libc::bind(fd.as_raw_fd(), addr, sll_len))?;
        // A bound packet socket's name carries the interface's hardware address.
        let mut name: libc::sockaddr_ll = std::mem::zeroed();
        let mut len = sll_len;
        let name_ptr = (&mut name as *mut libc::sockaddr_ll).cast::<libc::sockaddr>();
        check(libc::getsockname(fd.as_raw_fd(), name_ptr, &mut len))?;
        if name.sll_halen != 6 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("interface {ifindex} has no Ethernet address"),
            ));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&name.sll_addr[..6]);
        Ok((fd, sll, mac))
    }
}

/// Broadcasts the announcement of `ip` on interface `ifindex`, from that interface's MAC.
pub fn announce(ifindex: u32, ip: Ipv4Addr) -> io::Result<()> {
    let (fd, mut sll, mac) = packet_socket(ifindex, libc::ETH_P_ARP as u16)?;
    let msg = announcement(mac, ip);
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    let to = (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>();
    // SAFETY: sendto reads msg's bytes and the broadcast address, each with its true size.
    let sent = unsafe { libc::sendto(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, to, len) };
    check(sent.try_into().unwrap_or(-1))
}

fn set_ipv6_opt(fd: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt reads one c_int from a live local.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            opt,
            (&value as *const libc::c_int).cast(),
            len,
        )
    })
}

/// Sends the unsolicited advertisement of `ip` to all nodes (ff02::1) on interface
/// `ifindex`, from `ip` and with that interface's MAC as the target's.
pub fn advertise6(ifindex: u32, ip: Ipv6Addr) -> io::Result<()> {
    let (_, _, mac) = packet_socket(ifindex, libc::ETH_P_IPV6 as u16)?;
    let msg = advertisement(mac, ip);
    // SAFETY: a plain socket(2); the descriptor is owned (and closed) by OwnedFd at once.
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        );
        check(raw)?;
        OwnedFd::from_raw_fd(raw)
    };
    // Receivers drop neighbour discovery that a router could have forwarded (RFC 4861
    // §7.1.2): it must arrive with the hop limit it was sent with, 255.
    set_ipv6_opt(&fd, libc::IPV6_MULTICAST_HOPS, 255)?;
    set_ipv6_opt(&fd, libc::IPV6_MULTICAST_IF, ifindex as libc::c_int)?;
    let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let sin6 = |addr: Ipv6Addr, scope: u32| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        sin6_scope_id: scope,
    };
    // From our address, so the peer's entry is the one it updates.
    let from = sin6(ip, 0);
    let to = sin6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), ifindex);
    // SAFETY: bind and sendto read a sockaddr_in6 local and msg's bytes, each with its
    // true size.
    unsafe {
        let from = (&from as *const libc::sockaddr_in6).cast::<libc::sockaddr>();
        check(libc::bind(fd.as_raw_fd(), from, len))?;
        let to = (&to as *const libc::sockaddr_in6).cast::<libc::sockaddr>();
        let sent = libc::sendto(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, to, len);
        check(sent.try_into().unwrap_or(-1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_the_address_as_sender_and_target() {
        let mac = [0x0a, 0, 0, 0, 0, 0x01];
        let m = announcement(mac, Ipv4Addr::new(198, 18, 0, 1));
        // Ethernet/IPv4, 6- and 4-byte addresses, a request.
        assert_eq!(&m[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&m[8..14], &mac);
        assert_eq!(&m[14..18], &[198, 18, 0, 1]);
        assert_eq!(&m[18..24], &[0; 6]);
        assert_eq!(&m[24..28], &[198, 18, 0, 1]);
    }

    #[test]
    fn an_advertisement_overrides_and_carries_the_target_and_its_mac() {
        let mac = [0x0a, 0, 0, 0, 0, 0x01];
        let ip: Ipv6Addr = "2001:2::1".parse().unwrap();
        let m = advertisement(mac, ip);
        // Type 136, code 0, checksum left to the kernel; Override alone (not Router, not
        // Solicited: a solicited advertisement to a multicast address is dropped).
        assert_eq!(&m[..8], &[136, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(&m[8..24], &ip.octets());
        // Option 2 (target link-layer address), one 8-byte unit.
        assert_eq!(&m[24..26], &[2, 1]);
        assert_eq!(&m[26..32], &mac);
    }
}
