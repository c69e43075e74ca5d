//! hushgate addition: a shared budget for TCP buffer autotuning.
//!
//! A socket created with small buffers may grow them while a connection
//! needs it (its window, or its send buffer, is what limits it), up to a
//! per-socket maximum; the growth of all sockets sharing a budget is
//! bounded by it, so memory stays bounded however many connections grow.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes that buffer growth may take, shared by the sockets it is given to
/// ([`Socket::set_buffer_autotune`](super::Socket::set_buffer_autotune)).
/// A socket gives back what it took when it is dropped.
#[derive(Debug, Clone)]
pub struct BufferBudget(Arc<AtomicUsize>);

impl BufferBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> BufferBudget {
        BufferBudget(Arc::new(AtomicUsize::new(bytes)))
    }

    /// Bytes still available.
    pub fn available(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if that many are available.
    pub(super) fn take(&self, bytes: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                a.checked_sub(bytes)
            })
            .is_ok()
    }

    pub(super) fn give(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn takes_only_what_is_there() {
        let b = BufferBudget::new(100);
        let c = b.clone();
        assert!(b.take(60));
        assert!(!c.take(60));
        assert!(c.take(40));
        assert_eq!(b.available(), 0);
        b.give(100);
        assert_eq!(c.available(), 100);
    }
}
