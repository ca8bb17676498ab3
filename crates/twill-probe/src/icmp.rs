//! ICMP echo through surge-ping's raw sockets: one socket per family and per DF setting,
//! shared by every peer's probes (replies are told apart by identifier, sequence and
//! source address).

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use surge_ping::{Client, Config, PingIdentifier, PingSequence, ICMP};
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
        Ok(IcmpEcho {
            v4: client(ICMP::V4, false)?,
            v4_df: client(ICMP::V4, true)?,
            v6,
            ident: rand::random(),
            seq: AtomicU16::new(0),
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

impl Echo for IcmpEcho {
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
