//! `JobStore`: the state of async jobs for `GET /jobs/{job_id}`, bounded in
//! count and kept for `job_ttl` after they finish.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum JobState {
    /// Waiting for a batch.
    Queued,
    /// Its batch is computing.
    Running,
    /// Done; `output` is the `InferenceOutput` sent to the success queue.
    Succeeded {
        /// The result.
        output: Value,
    },
    /// Failed; `error` says why.
    Failed {
        /// Why.
        error: String,
    },
}

impl JobState {
    fn finished(&self) -> bool {
        matches!(self, JobState::Succeeded { .. } | JobState::Failed { .. })
    }
}

/// What `GET /jobs/{job_id}` returns.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// The model that runs it.
    pub model: String,
    /// State and result.
    #[serde(flatten)]
    pub state: JobState,
}

struct Job {
    model: String,
    state: JobState,
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<Uuid, Job>,
    /// Finished jobs in the order they finished, with when they expire.
    finished: VecDeque<(Instant, Uuid)>,
}

/// Bounded, expiring job records.
pub struct JobStore {
    jobs: Mutex<Jobs>,
    ttl: Duration,
    capacity: usize,
}

impl JobStore {
    /// A store of at most `capacity` jobs, keeping finished ones for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        JobStore {
            jobs: Mutex::new(Jobs::default()),
            ttl,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new queued job; `None` if the store is full of unfinished
    /// jobs.
    pub fn create(&self, model: &str) -> Option<Uuid> {
        let mut jobs = self.lock();
        let now = Instant::now();
        while let Some((expires, id)) = jobs.finished.front().copied() {
            if expires > now && jobs.by_id.len() < self.capacity {
                break;
            }
            jobs.finished.pop_front();
            jobs.by_id.remove(&id);
        }
        if jobs.by_id.len() >= self.capacity {
            return None;
        }
        let id = Uuid::new_v4();
        jobs.by_id.insert(
            id,
            Job {
                model: model.to_owned(),
                state: JobState::Queued,
            },
        );
        Some(id)
    }

    /// Moves a job to `state`.
    pub fn set(&self, id: Uuid, state: JobState) {
        let mut jobs = self.lock();
        let finished = state.finished();
        if let Some(job) = jobs.by_id.get_mut(&id) {
            if job.state.finished() {
                return;
            }
            job.state = state;
            if finished {
                let expires = Instant::now() + self.ttl;
                jobs.finished.push_back((expires, id));
            }
        }
    }

    /// Forgets a job that was never accepted.
    pub fn remove(&self, id: Uuid) {
        self.lock().by_id.remove(&id);
    }

    /// A job's current view, if known and not expired.
    pub fn get(&self, id: Uuid) -> Option<JobView> {
        let jobs = self.lock();
        let job = jobs.by_id.get(&id)?;
        if job.state.finished() {
            let expired = jobs
                .finished
                .iter()
                .any(|(expires, finished_id)| *finished_id == id && *expires <= Instant::now());
            if expired {
                return None;
            }
        }
        Some(JobView {
            job_id: id.to_string(),
            model: job.model.clone(),
            state: job.state.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_capacity_and_expiry() {
        let store = JobStore::new(2, Duration::from_millis(50));
        let a = store.create("m").unwrap();
        let b = store.create("m").unwrap();
        assert!(store.create("m").is_none(), "full of unfinished jobs");
        store.set(a, JobState::Running);
        assert_eq!(store.get(a).unwrap().state, JobState::Running);
        store.set(a, JobState::Failed { error: "x".into() });
        store.set(a, JobState::Running);
        assert!(
            matches!(store.get(a).unwrap().state, JobState::Failed { .. }),
            "finished is final"
        );
        let c = store.create("m").unwrap();
        assert!(
            store.get(a).is_none(),
            "oldest finished job evicted for room"
        );
        assert!(store.get(b).is_some() && store.get(c).is_some());
        store.set(
            b,
            JobState::Succeeded {
                output: Value::Null,
            },
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(store.get(b).is_none(), "expired after ttl");
    }
}
