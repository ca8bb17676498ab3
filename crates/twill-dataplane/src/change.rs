//! A flag a kernel monitor raises when something it watches changed, so periodic passes
//! can skip re-reading state nothing touched.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct ChangeFlag {
    touched: AtomicBool,
    /// The monitor stopped: from then on nothing may be skipped.
    broken: AtomicBool,
}

impl Default for ChangeFlag {
    /// Raised: the first look always reads.
    fn default() -> Self {
        ChangeFlag {
            touched: AtomicBool::new(true),
            broken: AtomicBool::new(false),
        }
    }
}

impl ChangeFlag {
    pub fn mark(&self) {
        self.touched.store(true, Ordering::SeqCst);
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
