//! Stand-ins for the AWS clients in a build without the `sqs` feature: each
//! setting that needs one is refused at start-up, naming the feature.

use std::sync::Arc;

use modalkit_core::InferencePipeline;
use modalkit_core::settings::QueueConfig;
use modalkit_core::wire::AsyncInput;
use modalkit_queue::QueueBackend;
use serde_json::Value;
use uuid::Uuid;

use crate::async_jobs::store::JobStore;
use crate::async_jobs::{AsyncJobs, JobError, JobIntake};
use crate::server::{ServerError, ServerOptions};

/// No AWS in this build.
pub(crate) struct Aws;

impl Aws {
    pub(crate) fn new(_: &ServerOptions, _: &QueueConfig) -> Self {
        Aws
    }

    pub(crate) async fn given_sqs_backend(&self) -> Option<Arc<dyn QueueBackend>> {
        None
    }

    pub(crate) async fn api_key(&self, parameter: &str) -> Result<String, ServerError> {
        Err(ServerError::NotCompiled {
            field: "app_settings.auth_config.ssm_key",
            value: parameter.to_owned(),
            feature: "sqs",
        })
    }

    pub(crate) async fn job_store(
        &self,
        _: &QueueConfig,
        _: f64,
        _: f64,
    ) -> Result<Arc<dyn JobStore>, ServerError> {
        Err(ServerError::NotCompiled {
            field: "app_settings.queue_config.job_store",
            value: "dynamodb".to_owned(),
            feature: "dynamodb",
        })
    }

    pub(crate) async fn input_queue(
        &self,
        queue_name: &str,
        _: &QueueConfig,
        _: String,
    ) -> Result<DurableIntake, ServerError> {
        Err(ServerError::NotCompiled {
            field: "app_settings.queue_config.input_queue",
            value: queue_name.to_owned(),
            feature: "sqs",
        })
    }
}

/// Durable jobs cannot exist in this build: no value of this type can.
pub(crate) enum DurableIntake {}

impl DurableIntake {
    // Never called (no value exists); it names the durable intake so the
    // job layer's code is the same in every build.
    #[allow(unreachable_code)]
    pub(crate) fn job_intake(&self) -> JobIntake {
        JobIntake::Durable(self.input_queue())
    }

    fn input_queue(&self) -> InputQueue {
        match *self {}
    }

    pub(crate) async fn start<P: InferencePipeline>(
        &self,
        _: Arc<AsyncJobs<P>>,
    ) -> Result<InputConsumer, ServerError> {
        match *self {}
    }
}

/// No input consumer runs in this build.
pub(crate) enum InputConsumer {}

impl InputConsumer {
    pub(crate) fn stop_polling(&self) {
        match *self {}
    }

    pub(crate) async fn wait(&self) {
        match *self {}
    }
}

/// No input queue exists in this build.
pub(crate) enum InputQueue {}

impl InputQueue {
    pub(crate) async fn send(
        &self,
        _: Uuid,
        _: &str,
        _: &AsyncInput<Value>,
        _: Option<&str>,
    ) -> Result<(), JobError> {
        match *self {}
    }
}
