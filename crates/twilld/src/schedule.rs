//! The loop's timing decisions, pure so they are unit-tested: when to renew the lease,
//! when to retry a failed renewal, and which passes read the whole kernel.

use std::time::{Duration, Instant};

use twill_store::Expiry;

/// How often a lease that never runs out (a reservation, a podCIDR) is checked on.
pub const CHECK_UNEXPIRING: Duration = Duration::from_secs(3600);

/// Even when the netlink monitor saw nothing, read the kernel this often.
pub const FULL_PASS_BACKSTOP: Duration = Duration::from_secs(60);

/// How long after a grant or renewal to renew: `margin` before the end
/// (`--subnet-lease-renew-margin`), or half-way when the margin is longer than the lease.
pub fn renew_after(expiry: Expiry, margin: Duration) -> Duration {
    match expiry {
        Expiry::Never => CHECK_UNEXPIRING,
        Expiry::At { ttl, .. } if margin < ttl => ttl - margin,
        Expiry::At { ttl, .. } => ttl / 2,
    }
}

/// How long after a failed renewal to try again: often enough that several tries fit in
/// the lease's life, at most a minute apart.
pub fn retry_renewal_after(expiry: Expiry) -> Duration {
    match expiry {
        Expiry::At { ttl, .. } => (ttl / 8).min(Duration::from_secs(60)),
        Expiry::Never => Duration::from_secs(60),
    }
}

/// Seconds until the lease runs out unless renewed, as `now` sees it; -1 when it never
/// does (the `twill_lease_expiry_seconds` metric).
pub fn seconds_left(expiry: Expiry, now: Instant) -> i64 {
    match expiry {
        Expiry::Never => -1,
        Expiry::At { deadline, .. } => deadline.saturating_duration_since(now).as_secs() as i64,
    }
}

/// Whether store events need the full pass (every peer against the kernel) rather than
/// just themselves: before the node is ready, after a re-list (a snapshot may hide
/// deletions), or when our own lease changed.
pub fn events_need_full_pass(ready: bool, snapshot: bool, own_lost: bool) -> bool {
    !ready || snapshot || own_lost
}

/// Whether a periodic pass reads the kernel's peer entries: when the monitor saw them
/// touched, when there is no monitor, or as the backstop in case it missed a message.
pub fn periodic_full_pass(touched: Option<bool>, since_full: Duration) -> bool {
    touched.unwrap_or(true) || since_full >= FULL_PASS_BACKSTOP
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl_s: u64) -> Expiry {
        Expiry::after(Duration::from_secs(ttl_s))
    }

    #[test]
    fn renewal_comes_margin_before_the_end_or_half_way() {
        let hour = Duration::from_secs(3600);
        // flannel's defaults: 24 h lease, 60 min margin.
        assert_eq!(
            renew_after(lease(86_400), hour),
            Duration::from_secs(82_800)
        );
        // A margin longer than the lease would renew at once, forever: half-way instead.
        assert_eq!(renew_after(lease(1800), hour), Duration::from_secs(900));
        assert_eq!(renew_after(lease(3600), hour), Duration::from_secs(1800));
        assert_eq!(renew_after(Expiry::Never, hour), CHECK_UNEXPIRING);
    }

    #[test]
    fn failed_renewals_retry_within_the_lease() {
        assert_eq!(retry_renewal_after(lease(240)), Duration::from_secs(30));
        assert_eq!(retry_renewal_after(lease(86_400)), Duration::from_secs(60));
        assert_eq!(retry_renewal_after(Expiry::Never), Duration::from_secs(60));
    }

    #[test]
    fn seconds_left_counts_down_and_never_is_minus_one() {
        let e = lease(100);
        let Expiry::At { deadline, .. } = e else {
            unreachable!()
        };
        assert_eq!(seconds_left(e, deadline - Duration::from_secs(40)), 40);
        assert_eq!(seconds_left(e, deadline + Duration::from_secs(5)), 0);
        assert_eq!(seconds_left(Expiry::Never, Instant::now()), -1);
    }

    #[test]
    fn which_passes_read_the_kernel() {
        assert!(events_need_full_pass(false, false, false));
        assert!(events_need_full_pass(true, true, false));
        assert!(events_need_full_pass(true, false, true));
        assert!(!events_need_full_pass(true, false, false));
        let short = Duration::from_secs(2);
        assert!(periodic_full_pass(None, short), "no monitor: always read");
        assert!(periodic_full_pass(Some(true), short));
        assert!(!periodic_full_pass(Some(false), short));
        assert!(periodic_full_pass(Some(false), FULL_PASS_BACKSTOP));
    }
}
