//! What the job store keeps about one async job, and what `GET /jobs/{id}`
//! shows of it.

use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The largest output (as JSON text) a job record keeps. A bigger output is
/// still delivered to the success queue; the record then carries a note
/// instead. 256 KiB also fits under DynamoDB's 400 KB item limit.
pub(crate) const MAX_RECORDED_OUTPUT_BYTES: usize = 256 * 1024;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, not computing yet.
    Queued,
    /// Taken by a container for its batch.
    Running,
    /// Done; the output went to the success queue (if one was named).
    Succeeded,
    /// Failed; the error went to the failure queue (if one was named).
    Failed,
    /// Cancelled while queued; never computed.
    Cancelled,
}

impl JobStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job ended (its final state is written once).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// How a job ended, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// The `InferenceOutput` sent to the success queue (`None`: too large to
    /// keep in the record).
    Succeeded(Option<Value>),
    /// Why it failed.
    Failed(String),
}

impl JobEnd {
    /// The end for an output, leaving out one over 256 KiB of JSON (it is
    /// still delivered; a record keeps a note instead, and fits under
    /// DynamoDB's 400 KB item limit).
    pub fn succeeded(output: Value) -> Self {
        let size = serde_json::to_string(&output).map_or(usize::MAX, |text| text.len());
        JobEnd::Succeeded((size <= MAX_RECORDED_OUTPUT_BYTES).then_some(output))
    }
}

/// One job's record.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct JobRecord {
    /// The job's id.
    #[schemars(with = "String")]
    pub job_id: Uuid,
    /// The model that runs it.
    pub model: String,
    /// Where it stands.
    pub status: JobStatus,
    /// When it was accepted (Unix seconds).
    pub created_at: f64,
    /// When its status last changed (Unix seconds).
    pub updated_at: f64,
    /// The `InferenceOutput` of a succeeded job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why a job failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the output was too large to keep here: it is only in the
    /// success queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the record expires (Unix seconds); after it, the job is unknown.
    #[serde(skip)]
    pub expires_at: f64,
}

impl JobRecord {
    /// A new queued job, expiring `ttl_seconds` from now unless it changes.
    pub fn queued(job_id: Uuid, model: &str, ttl_seconds: f64) -> Self {
        let now = unix_now();
        JobRecord {
            job_id,
            model: model.to_owned(),
            status: JobStatus::Queued,
            created_at: now,
            updated_at: now,
            output: None,
            error: None,
            note: None,
            expires_at: now + ttl_seconds,
        }
    }

    /// Applies a final state.
    pub fn end(&mut self, end: JobEnd, now: f64) {
        self.updated_at = now;
        match end {
            JobEnd::Succeeded(output) => {
                self.status = JobStatus::Succeeded;
                self.note = output.is_none().then(|| too_large_note().to_owned());
                self.output = output;
            }
            JobEnd::Failed(error) => {
                self.status = JobStatus::Failed;
                self.error = Some(error);
            }
        }
    }

    /// Whether the record is past its expiry at `now`.
    pub fn expired(&self, now: f64) -> bool {
        self.expires_at <= now
    }
}

/// The note a record carries instead of an output too large to keep.
pub(crate) fn too_large_note() -> &'static str {
    "the output exceeded the job record's size limit (256 KiB); it was delivered to the success queue only"
}

/// The error a cancelled job records and its failure queue receives.
pub(crate) const CANCELLED_ERROR: &str = "the job was cancelled before it was computed";

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
