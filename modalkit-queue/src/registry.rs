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

/// What a name in the registry stands for.
#[derive(Clone)]
enum Entry {
    /// A backend this binary can build.
    Factory(Factory),
    /// A backend this build left out, and the Cargo feature that brings it
    /// in: known, so a job naming its queues is refused at submit.
    #[cfg_attr(feature = "sqs", allow(dead_code))]
    NotCompiled { feature: &'static str },
}

/// Named backend factories. `memory` and `sqs` are registered by default
/// (`sqs` as not compiled in a build without the `sqs` feature).
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
    entries: BTreeMap<String, Entry>,
}

impl BackendRegistry {
    /// A registry with no backends.
    pub fn empty() -> Self {
        BackendRegistry {
            entries: BTreeMap::new(),
        }
    }

    /// A registry with the built-in `memory` and `sqs` backends. Without the
    /// `sqs` feature, `sqs` is known but not compiled: see
    /// [`BackendRegistry::missing_feature`].
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
        registry
            .entries
            .insert("sqs".to_owned(), Entry::NotCompiled { feature: "sqs" });
        registry
    }

    /// Registers (or replaces) a backend factory under `name`.
    pub fn register<F, Fut>(&mut self, name: &str, factory: F)
    where
        F: Fn(QueueConfig) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn QueueBackend>, QueueError>> + Send + 'static,
    {
        self.entries.insert(
            name.to_owned(),
            Entry::Factory(Arc::new(move |config| Box::pin(factory(config)))),
        );
    }

    /// Registered names, the backends this build left out among them.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The Cargo feature of the modalkit crate that `name` needs, when the
    /// name is a backend this build left out (`sqs` without the `sqs`
    /// feature); `None` for a backend it can build or an unknown name.
    pub fn missing_feature(&self, name: &str) -> Option<&'static str> {
        match self.entries.get(name) {
            Some(Entry::NotCompiled { feature }) => Some(feature),
            _ => None,
        }
    }

    /// Builds the backend `config.backend` names.
    pub async fn build(&self, config: &QueueConfig) -> Result<Arc<dyn QueueBackend>, QueueError> {
        match self.entries.get(&config.backend) {
            Some(Entry::Factory(factory)) => factory(config.clone()).await,
            Some(Entry::NotCompiled { feature }) => Err(QueueError::NotCompiled {
                backend: config.backend.clone(),
                feature: (*feature).to_owned(),
            }),
            None => Err(QueueError::UnknownBackend(
                config.backend.clone(),
                self.names().join(", "),
            )),
        }
    }
}

impl Default for BackendRegistry {
    fn default() -> Self {
        Self::with_defaults()
    }
}
