//! The AWS clients a server builds, from one AWS configuration: SQS for
//! result queues and the durable input queue, SSM for the API key, DynamoDB
//! for the shared job store. Without the `sqs` feature a stand-in takes
//! their place and refuses each setting that needs one, naming the feature,
//! so the server's own code carries no feature switches.

#[cfg_attr(feature = "sqs", path = "sdk.rs")]
#[cfg_attr(not(feature = "sqs"), path = "absent.rs")]
mod clients;

pub(crate) use clients::{Aws, DurableIntake, InputConsumer, InputQueue};
