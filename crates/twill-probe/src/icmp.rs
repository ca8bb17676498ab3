//! ICMP echo through surge-ping's raw sockets: one socket per family and per DF setting,
//! shared by every peer's probes (replies are told apart by identifier, sequence and
//! source address). One more raw socket per family hears the echo requests that reach this
//! node: a peer's probes arriving over a path our own probes get no answer on say the path
//! is cut one way only.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use surge_ping::{Client, Config, PingIdentifier, PingSequence, ICMP};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

/// Sends one echo request and waits for its reply: the only side effect of probing, so
/// the rest can be tested without sockets.
pub trait Echo: Send + Sync + 'static {
    /// An echo of `size` bytes (IP header included) to `to`, with DF set when `df`: its
    /// round-trip time, or `None` when no reply came within `timeout` (or it could not be
    /// sent: a packet larger than the path the kernel knows, with DF, is not).
    fn echo(
        &self,
        to: IpAddr,
        size: u32,
        df: bool,
        timeout: Duration,
    ) -> impl Future<Output = Option<Duration>> + Send;

    /// Whether an echo request from `from` reached this node within the last `within`: the
    /// peer's own probe, over the path that address is reached by.
    fn heard(&self, from: IpAddr, within: Duration) -> bool;
}

const ICMP_HEADER: u32 = 8;

fn ip_header(to: IpAddr) -> u32 {
    if to.is_ipv4() {
        20
    } else {
        40
    }
}

/// The raw sockets: IPv4 and IPv6, each plain and with DF. An IPv6 socket that cannot be
/// opened (a host without IPv6) leaves IPv6 probes unanswered rather than failing start.
pub struct IcmpEcho {
    v4: Client,
    v4_df: Client,
    v6: Option<(Client, Client)>,
    ident: u16,
    seq: AtomicU16,
    heard: Arc<Mutex<Heard>>,
    _listening: DropGuard,
}

impl IcmpEcho {
    pub fn new() -> io::Result<Self> {
        let client = |kind: ICMP, df: bool| -> io::Result<Client> {
            let config = Config::builder()
                .kind(kind)
                .sock_type_hint(socket2::Type::RAW)
                .build();
            let c = Client::new(&config)?;
            if df {
                set_df(&c, kind)?;
            }
            Ok(c)
        };
        let v6 = match (client(ICMP::V6, false), client(ICMP::V6, true)) {
            (Ok(a), Ok(b)) => Some((a, b)),
            (Err(e), _) | (_, Err(e)) => {
                debug!("no IPv6 ICMP socket, IPv6 peers go unprobed: {e}");
                None
            }
        };
        let heard = Arc::new(Mutex::new(Heard::default()));
        let stop = CancellationToken::new();
        tokio::spawn(listen(listener(false)?, false, heard.clone(), stop.clone()));
        match listener(true) {
            Ok(l) => {
                tokio::spawn(listen(l, true, heard.clone(), stop.clone()));
            }
            Err(e) => debug!("no ICMPv6 listener, one-way drops to IPv6 peers go untold: {e}"),
        }
        Ok(IcmpEcho {
            v4: client(ICMP::V4, false)?,
            v4_df: client(ICMP::V4, true)?,
            v6,
            ident: rand::random(),
            seq: AtomicU16::new(0),
            heard,
            _listening: stop.drop_guard(),
        })
    }

    fn client(&self, to: IpAddr, df: bool) -> Option<&Client> {
        match (to, df) {
            (IpAddr::V4(_), false) => Some(&self.v4),
            (IpAddr::V4(_), true) => Some(&self.v4_df),
            (IpAddr::V6(_), false) => self.v6.as_ref().map(|(c, _)| c),
            (IpAddr::V6(_), true) => self.v6.as_ref().map(|(_, c)| c),
        }
    }
}

/// DF on every packet of the socket, whatever path MTU the kernel has cached: the probe
/// is of the path, not of the kernel's idea of it (`IP_PMTUDISC_PROBE`).
fn set_df(c: &Client, kind: ICMP) -> io::Result<()> {
    let fd = c.get_socket().get_native_sock();
    let (level, opt, val) = match kind {
        ICMP::V4 => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        ),
        ICMP::V6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        ),
    };
    // SAFETY: fd is the client's open socket; the option value is a plain c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// When each source's last echo request arrived. Anyone may ping the node, so the table is
/// bounded: past `HEARD_MAX` sources, the ones not heard for `HEARD_KEEP` go, and while it
/// is still full new sources are not recorded (peers already in it are).
#[derive(Default)]
struct Heard(HashMap<IpAddr, Instant>);

const HEARD_MAX: usize = 16_384;
const HEARD_KEEP: Duration = Duration::from_secs(120);

impl Heard {
    fn record(&mut self, from: IpAddr, now: Instant) {
        if self.0.len() >= HEARD_MAX && !self.0.contains_key(&from) {
            self.0.retain(|_, t| now.duration_since(*t) < HEARD_KEEP);
            if self.0.len() >= HEARD_MAX {
                return;
            }
        }
        self.0.insert(from, now);
    }

    fn since(&self, from: IpAddr, within: Duration, now: Instant) -> bool {
        self.0
            .get(&from)
            .is_some_and(|t| now.duration_since(*t) <= within)
    }
}

/// A raw ICMP socket of the family, non-blocking, for `listen`.
fn listener(v6: bool) -> io::Result<AsyncFd<Socket>> {
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))?;
    s.set_nonblocking(true)?;
    // SAFETY: the Socket owns its descriptor, keeps it open until dropped with the AsyncFd
    // and returns that same descriptor from every as_raw_fd.
    Ok(unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }?)
}

/// The source of an echo request in what a raw socket read (pure): IPv4 raw sockets hand
/// over the IP header too, IPv6 ones only the ICMPv6 message (the source is the sender's
/// address).
fn echo_request_from(buf: &[u8], v6: bool, sender: Option<IpAddr>) -> Option<IpAddr> {
    if v6 {
        return (buf.first() == Some(&128)).then_some(sender?);
    }
    let ihl = usize::from(buf.first()? & 0x0f) * 4;
    if ihl < 20 || buf.get(ihl) != Some(&8) {
        return None;
    }
    let src: [u8; 4] = buf.get(12..16)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(src)))
}

async fn listen(
    sock: AsyncFd<Socket>,
    v6: bool,
    heard: Arc<Mutex<Heard>>,
    stop: CancellationToken,
) {
    // Headers are all that is read; the kernel drops the rest of a longer packet.
    let mut buf = [MaybeUninit::<u8>::uninit(); 128];
    loop {
        let mut ready = tokio::select! {
            r = sock.readable() => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!("ICMP listener stopped: {e}");
                    return;
                }
            },
            () = stop.cancelled() => return,
        };
        let (n, from) = match ready.try_io(|s| s.get_ref().recv_from(&mut buf)) {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                debug!("ICMP listener: {e}");
                continue;
            }
            Err(_would_block) => continue,
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        let sender = from.as_socket().map(|a| a.ip());
        if let Some(src) = echo_request_from(data, v6, sender) {
            heard
                .lock()
                .expect("not poisoned")
                .record(src, Instant::now());
        }
    }
}

impl Echo for IcmpEcho {
    fn heard(&self, from: IpAddr, within: Duration) -> bool {
        self.heard
            .lock()
            .expect("not poisoned")
            .since(from, within, Instant::now())
    }

    async fn echo(&self, to: IpAddr, size: u32, df: bool, timeout: Duration) -> Option<Duration> {
        let client = self.client(to, df)?;
        let payload = vec![0u8; size.saturating_sub(ip_header(to) + ICMP_HEADER) as usize];
        let mut pinger = client.pinger(to, PingIdentifier(self.ident)).await;
        pinger.timeout(timeout);
        let seq = PingSequence(self.seq.fetch_add(1, Ordering::Relaxed));
        match pinger.ping(seq, &payload).await {
            Ok((_, rtt)) => Some(rtt),
            Err(e) => {
                debug!(%to, size, df, "echo: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_are_told_by_type_and_source() {
        // An IPv4 header (20 bytes, source 10.244.2.0), then ICMP type 8 (request).
        let mut v4 = vec![
            0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 244, 2, 0, 10, 244, 1, 0,
        ];
        v4.extend([8, 0, 0, 0]);
        assert_eq!(
            echo_request_from(&v4, false, None),
            Some("10.244.2.0".parse().unwrap())
        );
        v4[20] = 0; // a reply
        assert_eq!(echo_request_from(&v4, false, None), None);
        assert_eq!(echo_request_from(&v4[..10], false, None), None);
        let sender: IpAddr = "fd00:10:244:2::".parse().unwrap();
        assert_eq!(
            echo_request_from(&[128, 0], true, Some(sender)),
            Some(sender)
        );
        assert_eq!(echo_request_from(&[129, 0], true, Some(sender)), None);
    }

    #[test]
    fn the_heard_table_forgets_and_stays_bounded() {
        let now = Instant::now();
        let a: IpAddr = "10.244.2.0".parse().unwrap();
        let mut h = Heard::default();
        h.record(a, now);
        assert!(h.since(a, Duration::from_secs(20), now + Duration::from_secs(19)));
        assert!(!h.since(a, Duration::from_secs(20), now + Duration::from_secs(21)));
        for i in 0..HEARD_MAX as u32 + 10 {
            h.record(IpAddr::V4(Ipv4Addr::from(i)), now);
        }
        assert_eq!(h.0.len(), HEARD_MAX);
        // Old sources make room for new ones.
        let later = now + HEARD_KEEP + Duration::from_secs(1);
        h.record("198.18.0.9".parse().unwrap(), later);
        assert_eq!(h.0.len(), 1);
    }
}
