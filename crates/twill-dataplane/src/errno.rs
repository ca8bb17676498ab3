//! The kernel's error numbers as netlink returns them. libc's constants, not literals:
//! the numbers differ between architectures (ENETUNREACH is 101 on x86 and 128 on MIPS).
//! A module of its own so the nexthop codec needs nothing from the netlink module.

pub(crate) use libc::{EEXIST, EHOSTUNREACH, ENETUNREACH, ENODEV, ENOENT, EOPNOTSUPP, ESRCH};

/// The kernel errno behind a netlink error, positive (EEXIST, not -EEXIST).
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
