//! The crate's error type.

/// Everything sending a result can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The queue is full (in-memory backend).
    #[error("queue '{queue}' is full ({capacity} messages)")]
    Full {
        /// The queue.
        queue: String,
        /// Its capacity.
        capacity: usize,
    },
    /// The message is larger than the backend accepts; retrying cannot help.
    #[error("message of {size} bytes exceeds the {limit}-byte limit of queue '{queue}'")]
    TooLarge {
        /// The queue.
        queue: String,
        /// The message's size.
        size: usize,
        /// The backend's limit.
        limit: usize,
    },
    /// The backend could not be reached or refused the message; may succeed
    /// on retry.
    #[error("sending to queue '{queue}' failed: {message}")]
    Unavailable {
        /// The queue.
        queue: String,
        /// The backend's error.
        message: String,
    },
    /// The destination refused the message for good (a webhook answered
    /// 4xx, or its host is not allowed); retrying cannot help.
    #[error("'{queue}' refused the message: {message}")]
    Rejected {
        /// The queue or URL.
        queue: String,
        /// Why.
        message: String,
    },
    /// A webhook URL results may not go to (malformed, or its host is off
    /// the allow-list); retrying cannot help.
    #[error("'{queue}' refused the message: {reason}")]
    Refused {
        /// The URL.
        queue: String,
        /// Why.
        #[source]
        reason: WebhookRefusal,
    },
    /// No backend is registered under this name.
    #[error("unknown queue backend '{0}' (registered: {1})")]
    UnknownBackend(String, String),
    /// The backend could not be set up.
    #[error("queue backend '{backend}' could not start: {message}")]
    Setup {
        /// The backend.
        backend: String,
        /// Why.
        message: String,
    },
    /// The backend is known but this build left it out; retrying cannot
    /// help, a binary built with `feature` can.
    #[error(
        "{backend} delivery is not compiled into this binary: build it with the `{feature}` feature of the modalkit crate"
    )]
    NotCompiled {
        /// The backend (`sqs`, `webhook`, ...).
        backend: String,
        /// The Cargo feature that brings it in.
        feature: String,
    },
    /// Writing the dead-letter file failed.
    #[error("dead-letter file {path}: {message}")]
    DeadLetter {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
}

impl QueueError {
    /// Whether retrying the same send may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            QueueError::Unavailable { .. } | QueueError::Full { .. }
        )
    }
}

/// Why results may not be POSTed to a URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookRefusal {
    /// The URL does not parse.
    #[error("'{url}' is not a valid URL: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
    /// Its host is not on `queue_config.webhook_allowed_hosts`.
    #[error("webhook host '{host}' is not in queue_config.webhook_allowed_hosts")]
    HostNotAllowed {
        /// The host, with its port when the URL names one.
        host: String,
    },
    /// Its host is, or resolves to, an internal address (loopback, private,
    /// link-local such as the cloud metadata address) and is not listed by
    /// name: `*` does not reach inside the network.
    #[error(
        "webhook host '{host}' is or resolves to an internal address ({address}); list the host itself in queue_config.webhook_allowed_hosts to allow it"
    )]
    InternalAddress {
        /// The host, with its port when the URL names one.
        host: String,
        /// The internal address.
        address: std::net::IpAddr,
    },
    /// The receiver answered with a redirect. Redirects are not followed:
    /// the allow-list applies to the URL the job names, not to where its
    /// receiver points.
    #[error("the receiver answered {status} (a redirect, which is not followed)")]
    Redirect {
        /// The status line.
        status: String,
    },
}
