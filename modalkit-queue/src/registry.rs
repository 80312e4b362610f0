//! Backends by name, so `queue_config.backend` can select a custom one.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use modalkit_core::settings::QueueConfig;

use crate::backend::QueueBackend;
use crate::error::QueueError;
use crate::memory::InMemoryQueue;

/// A boxed future that builds a backend.
pub type BackendFuture =
    Pin<Box<dyn Future<Output = Result<Arc<dyn QueueBackend>, QueueError>> + Send>>;

type Factory = Arc<dyn Fn(QueueConfig) -> BackendFuture + Send + Sync>;

/// Named backend factories. `memory` and `sqs` are registered by default.
///
/// ```
/// use std::sync::Arc;
/// use modalkit_queue::{BackendRegistry, InMemoryQueue, QueueBackend};
/// let mut registry = BackendRegistry::with_defaults();
/// registry.register("mine", |_config| async { Ok(Arc::new(InMemoryQueue::new(10)) as Arc<dyn QueueBackend>) });
/// assert!(registry.names().contains(&"mine".to_string()));
/// ```
#[derive(Clone)]
pub struct BackendRegistry {
    factories: BTreeMap<String, Factory>,
}

impl BackendRegistry {
    /// A registry with no backends.
    pub fn empty() -> Self {
        BackendRegistry {
            factories: BTreeMap::new(),
        }
    }

    /// A registry with the built-in `memory` and `sqs` backends (`sqs`
    /// refuses to start with a clear error unless the `sqs` feature is on).
    pub fn with_defaults() -> Self {
        let mut registry = Self::empty();
        registry.register("memory", |_config| async {
            Ok(Arc::new(InMemoryQueue::default()) as Arc<dyn QueueBackend>)
        });
        #[cfg(feature = "sqs")]
        registry.register("sqs", |config: QueueConfig| async move {
            let options = crate::sqs::SqsOptions {
                endpoint_url: config.broker_url,
            };
            Ok(Arc::new(crate::sqs::SqsQueue::connect(options).await) as Arc<dyn QueueBackend>)
        });
        #[cfg(not(feature = "sqs"))]
        registry.register("sqs", |_config: QueueConfig| async move {
            Err(QueueError::NotCompiled {
                backend: "sqs".to_owned(),
                feature: "sqs".to_owned(),
            })
        });
        registry
    }

    /// Registers (or replaces) a backend factory under `name`.
    pub fn register<F, Fut>(&mut self, name: &str, factory: F)
    where
        F: Fn(QueueConfig) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn QueueBackend>, QueueError>> + Send + 'static,
    {
        self.factories.insert(
            name.to_owned(),
            Arc::new(move |config| Box::pin(factory(config))),
        );
    }

    /// Registered names.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Builds the backend `config.backend` names.
    pub async fn build(&self, config: &QueueConfig) -> Result<Arc<dyn QueueBackend>, QueueError> {
        let factory = self.factories.get(&config.backend).ok_or_else(|| {
            QueueError::UnknownBackend(config.backend.clone(), self.names().join(", "))
        })?;
        factory(config.clone()).await
    }
}

impl Default for BackendRegistry {
    fn default() -> Self {
        Self::with_defaults()
    }
}
