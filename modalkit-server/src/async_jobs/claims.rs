//! Claims on the jobs this process holds in its own batcher queue (the
//! embedded mode). A job is withdrawn by cancel or started by its batch,
//! whichever comes first, decided by one compare-and-swap; a cancelled job
//! is never computed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;

/// One held job.
#[derive(Default)]
pub(super) struct Claim {
    state: AtomicU8,
    /// Woken once when the job is cancelled.
    pub cancelled: Notify,
}

impl Claim {
    /// `queued -> started`; false if the job was cancelled first.
    pub(super) fn try_start(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `queued -> cancelled`; false if its batch started first.
    pub(super) fn try_cancel(&self) -> bool {
        let won = self
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.cancelled.notify_one();
        }
        won
    }
}

/// The claims of this process, by job id.
#[derive(Default)]
pub(super) struct Claims {
    held: Mutex<HashMap<Uuid, Arc<Claim>>>,
}

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Claim>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a new job.
    pub(super) fn hold(&self, id: Uuid) -> Arc<Claim> {
        let claim = Arc::new(Claim::default());
        self.lock().insert(id, Arc::clone(&claim));
        claim
    }

    /// The claim on `id`, if this process holds it.
    pub(super) fn get(&self, id: Uuid) -> Option<Arc<Claim>> {
        self.lock().get(&id).cloned()
    }

    /// Lets go of a job that ended.
    pub(super) fn release(&self, id: Uuid) {
        self.lock().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_cancel_exclude_each_other() {
        let claims = Claims::default();
        let id = Uuid::new_v4();
        let claim = claims.hold(id);
        assert!(claim.try_cancel());
        assert!(!claim.try_start(), "a cancelled job never starts");
        let other = claims.hold(Uuid::new_v4());
        assert!(other.try_start());
        assert!(!other.try_cancel(), "a started job cannot be cancelled");
        claims.release(id);
        assert!(claims.get(id).is_none());
    }
}
