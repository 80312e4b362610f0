//! `DynamoJobStore`: job records in one DynamoDB table shared by every
//! container. The table (key `pk`, string) is created if missing, with
//! DynamoDB's TTL on `expires_at`. Every state change is an `UpdateItem`
//! with a condition on the current status, so a job's final state is
//! written once however often its message is delivered. Reads are strongly
//! consistent and treat a record past `expires_at` as gone (DynamoDB
//! deletes expired items lazily).
//!
//! Items: `job#<uuid>` (status, model, created_at, updated_at, result_json,
//! error_message, size_note, expires_at) and `key#<idempotency key>`
//! (fingerprint, job_id, expires_at).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use uuid::Uuid;

use super::{JobStore, KeyClaim, StoreError, Transition};
use crate::async_jobs::record::{
    CANCELLED_ERROR, JobEnd, JobRecord, JobStatus, too_large_note, unix_now,
};

type Item = HashMap<String, AttributeValue>;

/// DynamoDB-backed job records. See the module docs.
pub struct DynamoJobStore {
    client: Client,
    table: String,
    ttl_seconds: f64,
    /// How long an unfinished job is kept (its async deadline plus the TTL).
    unfinished_ttl_seconds: f64,
}

impl DynamoJobStore {
    /// Connects and makes sure `table` exists (creating it, with TTL on
    /// `expires_at`, if missing). Ended jobs are kept `ttl_seconds`,
    /// unfinished ones `unfinished_ttl_seconds`.
    pub async fn connect(
        config: &SdkConfig,
        table: &str,
        ttl_seconds: f64,
        unfinished_ttl_seconds: f64,
    ) -> Result<Self, StoreError> {
        let store = DynamoJobStore {
            client: Client::new(config),
            table: table.to_owned(),
            ttl_seconds,
            unfinished_ttl_seconds,
        };
        store.ensure_table().await?;
        Ok(store)
    }

    async fn ensure_table(&self) -> Result<(), StoreError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) if err.code() == Some("ResourceNotFoundException") => {}
            Err(err) => return Err(unavailable(&err)),
        }
        let key = KeySchemaElement::builder()
            .attribute_name("pk")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        let attribute = AttributeDefinition::builder()
            .attribute_name("pk")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key)
            .attribute_definitions(attribute)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "created the job table"),
            // Another container created it first.
            Err(err) if err.code() == Some("ResourceInUseException") => {}
            Err(err) => return Err(unavailable(&err)),
        }
        self.wait_active().await?;
        let ttl = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name("expires_at")
            .build()
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        if let Err(err) = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
        {
            // Reads still ignore expired records; only the clean-up is lost.
            tracing::warn!(table = %self.table, error = %DisplayErrorContext(&err), "could not enable TTL on the job table");
        }
        Ok(())
    }

    async fn wait_active(&self) -> Result<(), StoreError> {
        for _ in 0..120 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|err| unavailable(&err))?;
            if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::Unavailable(format!(
            "table {} did not become ACTIVE within 60 s",
            self.table
        )))
    }

    fn job_key(id: Uuid) -> Item {
        HashMap::from([("pk".to_owned(), s(format!("job#{id}")))])
    }

    async fn get_item(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable(&err))?;
        let now = unix_now();
        Ok(output
            .item
            .filter(|item| number(item, "expires_at").is_none_or(|at| at > now)))
    }

    /// Writes `set` (an update expression's SET list over `values`) if the
    /// job's status is one of `from`; on refusal, reads the current status.
    async fn transition(
        &self,
        id: Uuid,
        from: &[JobStatus],
        set: &str,
        mut values: Item,
    ) -> Result<Transition, StoreError> {
        let allowed: Vec<String> = (0..from.len()).map(|i| format!(":from{i}")).collect();
        for (name, status) in allowed.iter().zip(from) {
            values.insert(name.clone(), s(status.as_str()));
        }
        values.insert(":now".to_owned(), n(unix_now()));
        let condition = format!(
            "attribute_exists(pk) AND expires_at > :now AND #status IN ({})",
            allowed.join(", ")
        );
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::job_key(id)))
            .update_expression(set)
            .condition_expression(condition)
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(Transition::Done),
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => {
                Ok(match self.get(id).await? {
                    Some(record) => Transition::Refused(record.status),
                    None => Transition::Missing,
                })
            }
            Err(err) => Err(unavailable(&err)),
        }
    }
}

#[async_trait]
impl JobStore for DynamoJobStore {
    fn name(&self) -> &str {
        "dynamodb"
    }

    async fn create(&self, record: JobRecord) -> Result<bool, StoreError> {
        let mut item = Self::job_key(record.job_id);
        item.insert("status".to_owned(), s(record.status.as_str()));
        item.insert("model".to_owned(), s(&record.model));
        item.insert("created_at".to_owned(), n(record.created_at));
        item.insert("updated_at".to_owned(), n(record.updated_at));
        item.insert(
            "expires_at".to_owned(),
            n((record.created_at + self.unfinished_ttl_seconds).ceil()),
        );
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(err) => Err(unavailable(&err)),
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let Some(item) = self.get_item(Self::job_key(id)).await? else {
            return Ok(None);
        };
        let status = text(&item, "status")
            .and_then(JobStatus::parse)
            .ok_or_else(|| StoreError::Unavailable(format!("job {id} has no valid status")))?;
        Ok(Some(JobRecord {
            job_id: id,
            model: text(&item, "model").unwrap_or_default().to_owned(),
            status,
            created_at: number(&item, "created_at").unwrap_or_default(),
            updated_at: number(&item, "updated_at").unwrap_or_default(),
            output: text(&item, "result_json").and_then(|t| serde_json::from_str(t).ok()),
            error: text(&item, "error_message").map(str::to_owned),
            note: text(&item, "size_note").map(str::to_owned),
            expires_at: number(&item, "expires_at").unwrap_or(f64::INFINITY),
        }))
    }

    async fn start(&self, id: Uuid) -> Result<Transition, StoreError> {
        let values = HashMap::from([(":to".to_owned(), s("running"))]);
        self.transition(
            id,
            &[JobStatus::Queued],
            "SET #status = :to, updated_at = :now",
            values,
        )
        .await
    }

    async fn finish(&self, id: Uuid, end: JobEnd) -> Result<Transition, StoreError> {
        let now = unix_now();
        let mut values =
            HashMap::from([(":expires".to_owned(), n((now + self.ttl_seconds).ceil()))]);
        let set = match end {
            JobEnd::Succeeded(Some(output)) => {
                values.insert(":to".to_owned(), s("succeeded"));
                values.insert(":output".to_owned(), s(output.to_string()));
                "SET #status = :to, updated_at = :now, expires_at = :expires, result_json = :output"
            }
            JobEnd::Succeeded(None) => {
                values.insert(":to".to_owned(), s("succeeded"));
                values.insert(":note".to_owned(), s(too_large_note()));
                "SET #status = :to, updated_at = :now, expires_at = :expires, size_note = :note"
            }
            JobEnd::Failed(error) => {
                values.insert(":to".to_owned(), s("failed"));
                values.insert(":error".to_owned(), s(error));
                "SET #status = :to, updated_at = :now, expires_at = :expires, error_message = :error"
            }
        };
        self.transition(id, &[JobStatus::Queued, JobStatus::Running], set, values)
            .await
    }

    async fn cancel(&self, id: Uuid) -> Result<Transition, StoreError> {
        let values = HashMap::from([
            (":to".to_owned(), s("cancelled")),
            (":error".to_owned(), s(CANCELLED_ERROR)),
            (
                ":expires".to_owned(),
                n((unix_now() + self.ttl_seconds).ceil()),
            ),
        ]);
        self.transition(
            id,
            &[JobStatus::Queued],
            "SET #status = :to, updated_at = :now, expires_at = :expires, error_message = :error",
            values,
        )
        .await
    }

    async fn remove(&self, id: Uuid) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::job_key(id)))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| unavailable(&err))
    }

    async fn claim_key(
        &self,
        key: &str,
        fingerprint: &str,
        id: Uuid,
    ) -> Result<KeyClaim, StoreError> {
        let now = unix_now();
        let pk = format!("key#{key}");
        let item = HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("fingerprint".to_owned(), s(fingerprint)),
            ("job_id".to_owned(), s(id.to_string())),
            ("expires_at".to_owned(), n((now + self.ttl_seconds).ceil())),
        ]);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR expires_at <= :now")
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match put {
            Ok(_) => return Ok(KeyClaim::New),
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => {}
            Err(err) => return Err(unavailable(&err)),
        }
        let key_item = HashMap::from([("pk".to_owned(), s(&pk))]);
        let Some(existing) = self.get_item(key_item).await? else {
            // Released or expired in between: the caller may retry.
            return Err(StoreError::Unavailable(
                "the idempotency key changed while it was read; retry".to_owned(),
            ));
        };
        let job = text(&existing, "job_id")
            .and_then(|t| Uuid::parse_str(t).ok())
            .ok_or_else(|| StoreError::Unavailable(format!("key {key} names no job")))?;
        Ok(if text(&existing, "fingerprint") == Some(fingerprint) {
            KeyClaim::Existing(job)
        } else {
            KeyClaim::Conflict(job)
        })
    }

    async fn release_key(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("key#{key}")))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| unavailable(&err))
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: f64) -> AttributeValue {
    AttributeValue::N(format!("{value}"))
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn number(item: &Item, name: &str) -> Option<f64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn unavailable<E: std::error::Error + 'static>(err: &E) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(err).to_string())
}
