//! Transmit checksum offload on the VXLAN device, and what decides it. With offload on,
//! the kernel leaves the inner packet's checksum to the NIC; on kernels before 5.7 and
//! behind some drivers (VMware's vmxnet3: flannel #1279, #2152) the checksum is never
//! filled in and every packet arrives corrupt, which flannel's users fix by hand with
//! `ethtool -K flannel.1 tx-checksum-ip-generic off`.
//!
//! The device feature is read and set through the ethtool ioctl (`ETHTOOL_GTXCSUM`,
//! `ETHTOOL_STXCSUM`, `ETHTOOL_GDRVINFO`), written by hand: the ethtool netlink crates
//! read features but do not set them, and three fixed-size requests are all we need.

use std::io;

/// `--vxlan-tx-checksum-offload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffloadMode {
    /// Off where it is known to corrupt packets (kernel before 5.7, a vmxnet3 underlay),
    /// on elsewhere.
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for OffloadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(OffloadMode::Auto),
            "on" => Ok(OffloadMode::On),
            "off" => Ok(OffloadMode::Off),
            _ => Err(format!("{s:?} is not auto, on or off")),
        }
    }
}

/// Underlay drivers behind which VXLAN checksum offload corrupts packets.
pub const BROKEN_DRIVERS: &[&str] = &["vmxnet3"];

/// Whether the VXLAN device should offload transmit checksums (pure), and why.
pub fn decide(mode: OffloadMode, kernel: (u32, u32), driver: Option<&str>) -> (bool, String) {
    match mode {
        OffloadMode::On => (true, "--vxlan-tx-checksum-offload=on".into()),
        OffloadMode::Off => (false, "--vxlan-tx-checksum-offload=off".into()),
        OffloadMode::Auto if kernel < (5, 7) => (
            false,
            format!(
                "auto: kernel {}.{} is older than 5.7, whose VXLAN offload corrupts checksums",
                kernel.0, kernel.1
            ),
        ),
        OffloadMode::Auto => match driver.filter(|d| BROKEN_DRIVERS.contains(d)) {
            Some(d) => (
                false,
                format!("auto: the underlay's driver {d} corrupts offloaded VXLAN checksums"),
            ),
            None => (true, "auto".into()),
        },
    }
}

/// The running kernel's major and minor version.
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return (0, 0);
    }
    let release: String = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    parse_release(&release)
}

fn parse_release(r: &str) -> (u32, u32) {
    let mut parts = r.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 160],
}

/// One ethtool request on `dev`, `data` pointing at the command's struct.
fn ethtool(dev: &str, data: *mut libc::c_void) -> io::Result<()> {
    let name = dev.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: a datagram socket only to carry the ioctl; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; the name is NUL-terminated (zeroed, shorter than
    // IFNAMSIZ) and ifru_data points at a live struct of the command's layout.
    let rc = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = data.cast();
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            Err(err)
        } else {
            Ok(())
        }
    };
    rc
}

/// Whether `dev` offloads transmit checksums.
pub fn tx_checksum(dev: &str) -> io::Result<bool> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ethtool(dev, (&mut v as *mut EthtoolValue).cast())?;
    Ok(v.data != 0)
}

pub fn set_tx_checksum(dev: &str, on: bool) -> io::Result<()> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: on as u32,
    };
    ethtool(dev, (&mut v as *mut EthtoolValue).cast())
}

/// The driver behind `dev` (`ethtool -i`), e.g. "vmxnet3", "veth".
pub fn driver(dev: &str) -> io::Result<String> {
    let mut d = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    ethtool(dev, (&mut d as *mut DrvInfo).cast())?;
    let end = d.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&d.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_turns_offload_off_only_where_it_breaks() {
        let on = |k, d| decide(OffloadMode::Auto, k, d).0;
        assert!(on((6, 1), Some("virtio_net")));
        assert!(on((5, 7), None));
        assert!(!on((5, 6), Some("virtio_net")), "before 5.7");
        assert!(!on((4, 19), None));
        assert!(!on((6, 1), Some("vmxnet3")));
        let (v, why) = decide(OffloadMode::Auto, (6, 1), Some("vmxnet3"));
        assert!(!v && why.contains("vmxnet3"), "{why}");
        assert!(
            decide(OffloadMode::On, (4, 19), Some("vmxnet3")).0,
            "the operator wins"
        );
        assert!(!decide(OffloadMode::Off, (6, 1), None).0);
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1147"), (6, 18));
        assert_eq!(parse_release("5.4.0-150-generic"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
        assert!(kernel_version() >= (3, 0));
    }
}
