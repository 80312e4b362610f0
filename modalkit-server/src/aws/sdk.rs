//! The AWS clients, with the `sqs` feature (and `dynamodb` for the job
//! store).

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_ssm::error::DisplayErrorContext;
use modalkit_core::InferencePipeline;
use modalkit_core::settings::QueueConfig;
use modalkit_core::wire::AsyncInput;
use modalkit_queue::{
    JOB_ID_ATTRIBUTE, MODEL_ATTRIBUTE, Outgoing, QueueBackend, SqsOptions, SqsQueue,
    TRACEPARENT_ATTRIBUTE,
};
use serde_json::Value;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::async_jobs::consumer::ConsumerConfig;
pub(crate) use crate::async_jobs::consumer::InputConsumer;
use crate::async_jobs::store::JobStore;
use crate::async_jobs::{AsyncJobs, JobError, JobIntake};
use crate::server::{ServerError, ServerOptions};

/// One AWS configuration, loaded on first use (the standard chain unless
/// the program handed one in), and the clients made from it.
pub(crate) struct Aws {
    given: Option<SdkConfig>,
    loaded: OnceCell<SdkConfig>,
    /// `queue_config.broker_url`: the SQS endpoint when no configuration
    /// was handed in.
    broker_url: Option<String>,
}

impl Aws {
    /// Clients from `options.aws_config`, else from the environment with
    /// `queue_config.broker_url` as the SQS endpoint.
    pub(crate) fn new(options: &ServerOptions, queue_config: &QueueConfig) -> Self {
        Aws {
            given: options.aws_config.clone(),
            loaded: OnceCell::new(),
            broker_url: queue_config.broker_url.clone(),
        }
    }

    async fn config(&self) -> &SdkConfig {
        match &self.given {
            Some(config) => config,
            None => {
                self.loaded
                    .get_or_init(
                        || aws_config::load_defaults(aws_config::BehaviorVersion::latest()),
                    )
                    .await
            }
        }
    }

    async fn sqs(&self) -> SqsQueue {
        match &self.given {
            Some(config) => SqsQueue::from_config(config),
            None => {
                SqsQueue::connect(SqsOptions {
                    endpoint_url: self.broker_url.clone(),
                })
                .await
            }
        }
    }

    /// The SQS result backend built from a configuration the program handed
    /// in; `None` leaves `sqs` to the registry, which builds it on the first
    /// send.
    pub(crate) async fn given_sqs_backend(&self) -> Option<Arc<dyn QueueBackend>> {
        match &self.given {
            Some(_) => Some(Arc::new(self.sqs().await)),
            None => None,
        }
    }

    /// The API key in SSM parameter `parameter` (decrypted).
    pub(crate) async fn api_key(&self, parameter: &str) -> Result<String, ServerError> {
        let client = aws_sdk_ssm::Client::new(self.config().await);
        let refused = |reason: String| ServerError::ApiKeyFromSsm {
            parameter: parameter.to_owned(),
            reason,
        };
        let output = client
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await
            .map_err(|err| refused(DisplayErrorContext(&err).to_string()))?;
        output
            .parameter()
            .and_then(|p| p.value())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| refused("the parameter has no value".to_owned()))
    }

    /// The DynamoDB job store on `queue_config.job_table`, created if
    /// missing (with the `dynamodb` feature).
    pub(crate) async fn job_store(
        &self,
        queue_config: &QueueConfig,
        ttl_seconds: f64,
        unfinished_ttl_seconds: f64,
    ) -> Result<Arc<dyn JobStore>, ServerError> {
        let table = &queue_config.job_table;
        #[cfg(feature = "dynamodb")]
        {
            let store = crate::async_jobs::store::DynamoJobStore::connect(
                self.config().await,
                table,
                ttl_seconds,
                unfinished_ttl_seconds,
            )
            .await
            .map_err(|source| ServerError::JobStore {
                table: table.clone(),
                source,
            })?;
            tracing::info!(table = %table, "job records in DynamoDB");
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "dynamodb"))]
        {
            let _ = (table, ttl_seconds, unfinished_ttl_seconds);
            Err(ServerError::NotCompiled {
                field: "app_settings.queue_config.job_store",
                value: "dynamodb".to_owned(),
                feature: "dynamodb",
            })
        }
    }

    /// The input queue `queue_config.input_queue` names, read on behalf of
    /// `default_model` when a message names none.
    pub(crate) async fn input_queue(
        &self,
        queue_name: &str,
        queue_config: &QueueConfig,
        default_model: String,
    ) -> Result<DurableIntake, ServerError> {
        let config = ConsumerConfig {
            queue_name: queue_name.to_owned(),
            max_messages: queue_config.input_max_messages as i32,
            wait_seconds: queue_config.input_wait_seconds as i32,
            visibility_seconds: queue_config.input_visibility_timeout_seconds as i32,
            max_in_flight: queue_config.input_max_in_flight,
            default_model,
        };
        Ok(DurableIntake {
            sqs: Arc::new(self.sqs().await),
            config,
        })
    }
}

/// Durable jobs: accepted jobs go to an SQS input queue that every
/// container's consumer reads.
pub(crate) struct DurableIntake {
    sqs: Arc<SqsQueue>,
    config: ConsumerConfig,
}

impl DurableIntake {
    /// Where `/predict_async` puts accepted jobs.
    pub(crate) fn job_intake(&self) -> JobIntake {
        JobIntake::Durable(InputQueue {
            sqs: Arc::clone(&self.sqs),
            queue: self.config.queue_name.clone(),
        })
    }

    /// Starts consuming the input queue.
    pub(crate) async fn start<P: InferencePipeline>(
        &self,
        jobs: Arc<AsyncJobs<P>>,
    ) -> Result<InputConsumer, ServerError> {
        Ok(InputConsumer::start(Arc::clone(&self.sqs), jobs, self.config.clone()).await?)
    }
}

/// The input queue accepted jobs are sent to.
pub(crate) struct InputQueue {
    sqs: Arc<SqsQueue>,
    queue: String,
}

impl InputQueue {
    /// Puts job `id` for `model` on the input queue and returns once SQS
    /// has it; the consumer continues `traceparent`'s trace.
    pub(crate) async fn send(
        &self,
        id: Uuid,
        model: &str,
        envelope: &AsyncInput<Value>,
        traceparent: Option<&str>,
    ) -> Result<(), JobError> {
        let body = serde_json::to_string(envelope).map_err(JobError::Encode)?;
        let job_id = id.to_string();
        let mut attributes = vec![
            (JOB_ID_ATTRIBUTE, job_id.as_str()),
            (MODEL_ATTRIBUTE, model),
        ];
        if let Some(traceparent) = traceparent {
            attributes.push((TRACEPARENT_ATTRIBUTE, traceparent));
        }
        // Each job is its own FIFO group: jobs need no order among
        // themselves, and one group would let a FIFO queue hand out one job
        // at a time.
        let outgoing = Outgoing {
            body: &body,
            dedup_id: &job_id,
            group_id: Some(&job_id),
            attributes: &attributes,
        };
        Ok(self.sqs.send_outgoing(&self.queue, outgoing).await?)
    }
}
