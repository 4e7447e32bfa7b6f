//! A value tasks can wait on. Like `tokio::sync::watch`, minus the randomized choice among
//! its internal notifiers (`watch` draws from tokio's process-global RNG on every wait), which
//! would make the order of wake-ups — and so a simulated run — depend on what ran before it in
//! the same process. Waiters here are woken in FIFO order.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A shared value with change notification.
#[derive(Debug, Default)]
pub(crate) struct Signal<T> {
    value: Mutex<T>,
    notify: Notify,
}

impl<T: Clone> Signal<T> {
    pub(crate) fn new(v: T) -> Arc<Signal<T>> {
        Arc::new(Signal { value: Mutex::new(v), notify: Notify::new() })
    }

    /// The current value.
    pub(crate) fn get(&self) -> T {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value and wakes every waiter.
    pub(crate) fn set(&self, v: T) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = v;
        self.notify.notify_waiters();
    }

    /// Resolves once `pred` holds for the value (at once if it already does).
    pub(crate) async fn wait_for(&self, pred: impl Fn(&T) -> bool) -> T {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a `set` in between is not missed.
            notified.as_mut().enable();
            {
                let v = self.value.lock().unwrap_or_else(|e| e.into_inner());
                if pred(&v) {
                    return v.clone();
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;

    #[tokio::test]
    async fn wait_for_sees_sets_before_and_after_it_starts() {
        let s = Signal::new(0u32);
        s.set(1);
        assert_eq!(s.wait_for(|v| *v >= 1).await, 1);
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait_for(|v| *v == 3).await });
        tokio::task::yield_now().await;
        s.set(2);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "2 does not satisfy the predicate");
        s.set(3);
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(s.get(), 3);
    }
}
