//! `LazyBackend`: a registered backend built on its first send. A server
//! whose jobs name no queue never builds it, so the default `sqs` backend
//! costs nothing (and needs no AWS set-up, nor even the `sqs` feature)
//! until a job names a queue.

use std::sync::Arc;

use async_trait::async_trait;
use modalkit_core::settings::QueueConfig;
use tokio::sync::OnceCell;

use crate::backend::{Labels, QueueBackend};
use crate::error::QueueError;
use crate::registry::BackendRegistry;

/// A backend built by its registry on first use; a failed build is tried
/// again on the next send.
pub struct LazyBackend {
    registry: BackendRegistry,
    config: QueueConfig,
    built: OnceCell<Arc<dyn QueueBackend>>,
}

impl LazyBackend {
    /// The backend `config.backend` names; fails at once if no backend is
    /// registered under that name.
    pub fn new(registry: BackendRegistry, config: QueueConfig) -> Result<Self, QueueError> {
        if !registry.names().contains(&config.backend) {
            return Err(QueueError::UnknownBackend(
                config.backend.clone(),
                registry.names().join(", "),
            ));
        }
        Ok(LazyBackend {
            registry,
            config,
            built: OnceCell::new(),
        })
    }

    async fn backend(&self) -> Result<&Arc<dyn QueueBackend>, QueueError> {
        self.built
            .get_or_try_init(|| async {
                let backend = self.registry.build(&self.config).await?;
                tracing::info!(backend = %self.config.backend, "queue backend started on its first send");
                Ok(backend)
            })
            .await
    }
}

#[async_trait]
impl QueueBackend for LazyBackend {
    fn name(&self) -> &str {
        &self.config.backend
    }

    async fn send(
        &self,
        queue: &str,
        message: &str,
        labels: &Labels<'_>,
    ) -> Result<(), QueueError> {
        self.backend().await?.send(queue, message, labels).await
    }
}
