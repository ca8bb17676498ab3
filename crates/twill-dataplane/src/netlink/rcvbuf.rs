//! Receive buffers for the sockets that listen to the kernel's multicast groups. A
//! notification the kernel cannot queue is dropped, and the next read fails with ENOBUFS
//! (netlink-proto hands that on as an overrun): at 10 000 peers our own full pass queues
//! 30 000 notifications, far past the default 208 KB.

use std::os::fd::AsRawFd;

/// What a listening socket may queue. Kernel memory, held only while a burst is unread.
pub const LISTENER_BYTES: usize = 8 << 20;

/// Sets the socket's receive buffer to `bytes`: past `net.core.rmem_max` where we may
/// (CAP_NET_ADMIN, as twilld runs), else as far as rmem_max lets us. Callers go on when
/// it fails: a smaller buffer only means more overruns, which they handle.
pub fn grow(socket: &impl AsRawFd, bytes: usize) -> std::io::Result<()> {
    let fd = socket.as_raw_fd();
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: `fd` is an open socket and the option is an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}
