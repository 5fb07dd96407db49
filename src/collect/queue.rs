//! The queue from a reader thread to the poll loop: bounded in items (a stalled loop must not
//! grow it without limit: issue 12), without reserving the items up front. std's
//! `sync_channel(n)` allocates all `n` slots at creation: the destroy-notification queue's
//! 131,072 were 20 MB of resident memory before the first socket closed (measured: `depmap
//! run` 16 → 44 MB with it, benches/poll.rs). This one is an unbounded channel with a count
//! of what is queued; memory follows what is actually waiting. An item may weigh more than one
//! (a batch of events counts as its events: [`QueueSender::try_send_weighted`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// `max` items are waiting: the poll loop is behind.
    Full,
    /// The poll loop is gone.
    Closed,
}

pub struct QueueSender<T> {
    tx: Sender<(T, usize)>,
    queued: Arc<AtomicUsize>,
    max: usize,
}

pub struct QueueReceiver<T> {
    rx: Receiver<(T, usize)>,
    queued: Arc<AtomicUsize>,
}

/// A queue holding at most `max` items.
pub fn bounded<T>(max: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            queued: queued.clone(),
            max,
        },
        QueueReceiver { rx, queued },
    )
}

impl<T> QueueSender<T> {
    pub fn try_send(&self, item: T) -> Result<(), NotQueued> {
        self.try_send_weighted(item, 1)
    }

    /// Queues `item` as `weight` items (refused when they would pass `max`).
    pub fn try_send_weighted(&self, item: T, weight: usize) -> Result<(), NotQueued> {
        // One sender (the reader thread): the count cannot pass `max` between load and add.
        if self.queued.load(Ordering::Acquire) + weight > self.max {
            return Err(NotQueued::Full);
        }
        self.queued.fetch_add(weight, Ordering::AcqRel);
        self.tx.send((item, weight)).map_err(|_| {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            NotQueued::Closed
        })
    }

    /// Room left, in items.
    pub fn room(&self) -> usize {
        self.max.saturating_sub(self.queued.load(Ordering::Acquire))
    }
}

impl<T> QueueReceiver<T> {
    /// Everything queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        self.rx.try_iter().map(|(item, weight)| {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            item
        })
    }

    /// The next item, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let (item, weight) = self.rx.recv_timeout(timeout)?;
        self.queued.fetch_sub(weight, Ordering::AcqRel);
        Ok(item)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_max_and_makes_room_as_it_is_read() {
        let (tx, rx) = bounded::<u32>(3);
        for i in 0..3 {
            assert_eq!(tx.try_send(i), Ok(()));
        }
        assert_eq!(tx.try_send(3), Err(NotQueued::Full));
        assert_eq!(rx.len(), 3);
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Ok(0));
        assert_eq!(tx.try_send(4), Ok(()));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2, 4]);
        assert!(rx.is_empty());
        drop(rx);
        assert_eq!(tx.try_send(5), Err(NotQueued::Closed));
    }

    #[test]
    fn a_batch_counts_as_its_items() {
        let (tx, rx) = bounded::<Vec<u32>>(5);
        assert_eq!(tx.try_send_weighted(vec![1, 2, 3], 3), Ok(()));
        assert_eq!(tx.room(), 2);
        assert_eq!(tx.try_send_weighted(vec![4, 5, 6], 3), Err(NotQueued::Full));
        assert_eq!(tx.try_send_weighted(vec![4, 5], 2), Ok(()));
        assert_eq!(rx.len(), 5);
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(tx.room(), 5);
    }
}
