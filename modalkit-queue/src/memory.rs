//! `InMemoryQueue`: messages kept per queue name in the process, bounded and
//! readable. The default backend for development and tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::backend::{Labels, QueueBackend};
use crate::error::QueueError;

/// Messages per queue, in arrival order, at most `capacity` per queue.
///
/// ```
/// # tokio_test_block_on(async {
/// use modalkit_queue::{InMemoryQueue, Labels, QueueBackend};
/// let queue = InMemoryQueue::new(2);
/// queue.send("done", "{\"n\":1}", &Labels::message("m1")).await.unwrap();
/// assert_eq!(queue.peek("done"), vec!["{\"n\":1}".to_string()]);
/// assert_eq!(queue.drain("done").len(), 1);
/// assert!(queue.peek("done").is_empty());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct InMemoryQueue {
    capacity: usize,
    queues: Mutex<BTreeMap<String, VecDeque<String>>>,
}

impl InMemoryQueue {
    /// A queue set holding at most `capacity` messages per queue.
    pub fn new(capacity: usize) -> Self {
        InMemoryQueue {
            capacity,
            queues: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<String>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The messages in `queue`, left in place.
    pub fn peek(&self, queue: &str) -> Vec<String> {
        self.lock()
            .get(queue)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes and returns the messages in `queue`.
    pub fn drain(&self, queue: &str) -> Vec<String> {
        self.lock().remove(queue).map(Vec::from).unwrap_or_default()
    }

    /// Every queue's messages, left in place.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<String>> {
        self.lock()
            .iter()
            .map(|(name, q)| (name.clone(), q.iter().cloned().collect()))
            .collect()
    }
}

impl Default for InMemoryQueue {
    fn default() -> Self {
        InMemoryQueue::new(100_000)
    }
}

#[async_trait]
impl QueueBackend for InMemoryQueue {
    fn name(&self) -> &str {
        "memory"
    }

    async fn send(&self, queue: &str, message: &str, _: &Labels<'_>) -> Result<(), QueueError> {
        let mut queues = self.lock();
        let entries = queues.entry(queue.to_owned()).or_default();
        if entries.len() >= self.capacity {
            return Err(QueueError::Full {
                queue: queue.to_owned(),
                capacity: self.capacity,
            });
        }
        entries.push_back(message.to_owned());
        Ok(())
    }
}
