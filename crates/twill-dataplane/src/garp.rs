//! A gratuitous ARP for the node's underlay address after the underlay moved. A host with
//! two NICs on one segment answers ARP for either's address from both (ARP flux, the
//! default `arp_ignore=0`), so a peer may hold our address at the other NIC's MAC; when
//! that NIC goes, the peer keeps sending VXLAN to a MAC nobody has until its entry ages
//! out (~30 s). An ARP request whose sender and target are our address makes Linux peers
//! replace an entry they have at once, whatever their `arp_accept`.
//!
//! Written by hand over an AF_PACKET socket: one 28-byte message and three syscalls, which
//! no well-kept crate offers on its own (the packet crates bring a whole capture stack).

use std::io;
use std::net::Ipv4Addr;
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

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Broadcasts the announcement of `ip` on interface `ifindex`, from that interface's MAC.
pub fn announce(ifindex: u32, ip: Ipv4Addr) -> io::Result<()> {
    let proto = (libc::ETH_P_ARP as u16).to_be();
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
        let msg = announcement(mac, ip);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let sent = libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            addr,
            sll_len,
        );
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
}
