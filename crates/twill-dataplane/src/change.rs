//! A flag a kernel monitor raises when something it watches changed, so periodic passes
//! can skip re-reading state nothing touched, and a repair can start the moment it is.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct ChangeFlag {
    touched: AtomicBool,
    /// Wakes one waiter per burst of marks (a mark with nobody waiting is kept for the
    /// next wait), so a thousand notifications cost one wake-up.
    wake: tokio::sync::Notify,
    /// The monitor stopped: from then on nothing may be skipped.
    broken: AtomicBool,
}

impl Default for ChangeFlag {
    /// Raised: the first look always reads.
    fn default() -> Self {
        ChangeFlag {
            touched: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
            broken: AtomicBool::new(false),
        }
    }
}

impl ChangeFlag {
    pub fn mark(&self) {
        self.touched.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Returns once the flag has been marked since the last wait returned (at once if it
    /// was marked meanwhile). Does not lower the flag: `take` does.
    pub async fn marked(&self) {
        self.wake.notified().await;
    }

    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    /// Whether anything changed since the last call. Call it before reading, so a change
    /// racing the read is kept for next time.
    pub fn take(&self) -> bool {
        self.touched.swap(false, Ordering::SeqCst) || self.broken.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_marks_wakes_once() {
        let f = std::sync::Arc::new(ChangeFlag::default());
        for _ in 0..1000 {
            f.mark();
        }
        // The marks made with nobody waiting: one wake-up, then nothing.
        tokio::time::timeout(std::time::Duration::from_millis(100), f.marked())
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), f.marked())
                .await
                .is_err(),
            "woken twice for one burst"
        );
        let g = f.clone();
        let waiter = tokio::spawn(async move { g.marked().await });
        tokio::task::yield_now().await;
        f.mark();
        tokio::time::timeout(std::time::Duration::from_millis(100), waiter)
            .await
            .expect("a waiter is woken")
            .unwrap();
    }

    #[test]
    fn raised_at_first_then_only_after_a_mark_and_always_once_broken() {
        let f = ChangeFlag::default();
        assert!(f.take());
        assert!(!f.take());
        f.mark();
        assert!(f.take());
        assert!(!f.take());
        f.mark_broken();
        assert!(f.take() && f.take());
    }
}
