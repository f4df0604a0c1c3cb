//! The worker's instance slots. The pooling allocator reserves room for
//! `max_instances` live instances in all, shared by every actor; a live
//! instance (running or idle) holds one [`Slot`] until it is dropped.
//!
//! Taking a slot while some are free is one atomic operation and nothing
//! else. Only a full pool costs more: the caller evicts an idle instance or
//! [`wait`](Slots::wait)s, and while anyone waits, instances that finish a
//! call are dropped instead of kept idle ([`under_pressure`](Slots::under_pressure)).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::engine::EPOCH_TICK;

pub(crate) struct Slots {
    max: u32,
    /// Live instances, each holding a [`Slot`].
    live: AtomicU32,
    /// Calls waiting for room in the pool now.
    waiting: AtomicU32,
    /// Told when a slot is given back while someone waits.
    freed: Notify,
}

/// Room for one live instance; given back when dropped. Keep it next to
/// the instance and drop it after the instance, so that wasmtime has its
/// room back before anyone is told the slot is free.
pub(crate) struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            live: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            freed: Notify::new(),
        })
    }

    /// A slot, if one is free.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut live = self.live.load(Ordering::Relaxed);
        loop {
            if live >= self.max {
                return None;
            }
            match self.live.compare_exchange_weak(
                live,
                live + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Slot {
                        slots: self.clone(),
                    })
                }
                Err(now) => live = now,
            }
        }
    }

    /// Whether some call waits for room: an instance that finishes its call
    /// should then be dropped rather than kept idle.
    pub(crate) fn under_pressure(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Whether [`try_take`](Self::try_take) could succeed now.
    pub(crate) fn has_room(&self) -> bool {
        self.live.load(Ordering::SeqCst) < self.max
    }

    /// Waits until a slot is given back, or an epoch tick passes (then the
    /// caller looks again); returns at once if `ready` holds once this call
    /// is registered as waiting, so no slot given back in between is missed.
    pub(crate) async fn wait(&self, ready: impl FnOnce() -> bool) {
        let _waiting = Waiting::register(&self.waiting);
        let freed = self.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if ready() {
            return;
        }
        tokio::select! {
            () = freed => {}
            () = tokio::time::sleep(EPOCH_TICK) => {}
        }
    }

    /// Live instances now.
    #[cfg(test)]
    fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        slots.live.fetch_sub(1, Ordering::SeqCst);
        if slots.waiting.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_waiters();
        }
    }
}

/// One registered waiter; unregisters when dropped, however its wait ends.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn register(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_counted_given_back_and_waited_for() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none() && !slots.has_room());
        assert_eq!(slots.live(), 2);
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move {
                while !slots.has_room() {
                    slots.wait(|| slots.has_room()).await;
                }
                slots.try_take().is_some()
            })
        };
        while !slots.under_pressure() {
            tokio::task::yield_now().await;
        }
        drop(a);
        assert!(waiter.await.unwrap(), "the waiter got the slot given back");
        assert!(!slots.under_pressure(), "the waiter unregistered");
        drop(b);
        assert_eq!(slots.live(), 0);
    }
}
