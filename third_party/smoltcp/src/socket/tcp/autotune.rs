//! hushgate addition: a shared budget for TCP buffer autotuning.
//!
//! A socket created with small buffers may grow them while a connection
//! needs it (its window, or its send buffer, is what limits it), up to a
//! per-socket maximum; the growth of all sockets sharing a budget is
//! bounded by it, so memory stays bounded however many connections grow.
//! A budget may draw on a parent ([`BufferBudget::share`]): a share per
//! peer of a budget for the whole stack, so one peer's connections cannot
//! take everything the stack may grow by.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes that buffer growth may take, shared by the sockets it is given to
/// ([`Socket::set_buffer_autotune`](super::Socket::set_buffer_autotune)).
/// A socket gives back what it took when it is dropped.
#[derive(Debug, Clone)]
pub struct BufferBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    available: AtomicUsize,
    /// Growth paid from this budget is paid from the parent too.
    parent: Option<BufferBudget>,
}

impl BufferBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> BufferBudget {
        BufferBudget(Arc::new(Inner {
            available: AtomicUsize::new(bytes),
            parent: None,
        }))
    }

    /// A budget of at most `bytes` that also draws on this one: growth
    /// paid from the share needs `bytes` available in both, and is given
    /// back to both.
    pub fn share(&self, bytes: usize) -> BufferBudget {
        BufferBudget(Arc::new(Inner {
            available: AtomicUsize::new(bytes),
            parent: Some(self.clone()),
        }))
    }

    /// Bytes still available in this budget (a share's parent may have
    /// fewer).
    pub fn available(&self) -> usize {
        self.0.available.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if that many are available (in the parent too).
    pub(super) fn take(&self, bytes: usize) -> bool {
        let taken = self
            .0
            .available
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                a.checked_sub(bytes)
            })
            .is_ok();
        if !taken {
            return false;
        }
        if let Some(p) = &self.0.parent
            && !p.take(bytes)
        {
            self.0.available.fetch_add(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(super) fn give(&self, bytes: usize) {
        self.0.available.fetch_add(bytes, Ordering::Relaxed);
        if let Some(p) = &self.0.parent {
            p.give(bytes);
        }
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

    #[test]
    fn a_share_is_bounded_by_itself_and_its_parent() {
        let whole = BufferBudget::new(100);
        let a = whole.share(60);
        let b = whole.share(60);
        assert!(a.take(60));
        assert!(!a.take(1), "the share is spent");
        assert_eq!(whole.available(), 40);
        assert!(!b.take(50), "the parent has only 40 left");
        assert_eq!(b.available(), 60, "a refused take leaves the share whole");
        assert!(b.take(40));
        assert_eq!(whole.available(), 0);
        a.give(60);
        assert_eq!((a.available(), whole.available()), (60, 60));
    }
}
