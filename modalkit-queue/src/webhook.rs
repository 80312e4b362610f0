//! `WebhookSender`: async results POSTed to the URL a job names as its
//! success or failure "queue", signed per the Standard Webhooks scheme
//! (<https://www.standardwebhooks.com>): `webhook-id` (the same on every
//! retry of one result), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//! 429, 5xx, timeouts and connection errors are retried by [`crate::Delivery`];
//! other answers are final (dead-lettered). Only hosts on the allow-list are
//! called, so a request cannot make the server call arbitrary hosts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{QueueError, WebhookRefusal};

/// How webhooks are sent.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// The signing secret: `whsec_<base64>` (Standard Webhooks) or any other
    /// text, used as the key as is. None: unsigned.
    pub secret: Option<String>,
    /// Hosts results may be POSTed to: `host` (any port) or `host:port`
    /// (that port only); `*` allows any. Empty: none.
    pub allowed_hosts: Vec<String>,
    /// Timeout of one POST.
    pub timeout: Duration,
}

/// Sends results to webhook URLs.
pub struct WebhookSender {
    client: reqwest::Client,
    key: Option<Vec<u8>>,
    allowed_hosts: Vec<String>,
}

impl WebhookSender {
    /// A sender with `config`; fails if the secret is a malformed `whsec_`.
    pub fn new(config: &WebhookConfig) -> Result<Self, QueueError> {
        let setup = |message: String| QueueError::Setup {
            backend: "webhook".to_owned(),
            message,
        };
        let key = match &config.secret {
            None => None,
            Some(secret) => Some(match secret.strip_prefix("whsec_") {
                Some(encoded) => STANDARD.decode(encoded).map_err(|err| {
                    setup(format!(
                        "webhook secret: invalid base64 after whsec_: {err}"
                    ))
                })?,
                None => secret.as_bytes().to_vec(),
            }),
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|err| setup(err.to_string()))?;
        Ok(WebhookSender {
            client,
            key,
            allowed_hosts: config.allowed_hosts.clone(),
        })
    }

    /// Whether results may go to `url`: a valid http(s) URL whose host is on
    /// the allow-list. The error says why not.
    pub fn check(&self, url: &str) -> Result<(), WebhookRefusal> {
        let parsed = reqwest::Url::parse(url).map_err(|source| WebhookRefusal::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        let host = parsed.host_str().unwrap_or_default();
        let with_port = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let allowed = self
            .allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || *allowed == host || *allowed == with_port);
        if allowed {
            Ok(())
        } else {
            Err(WebhookRefusal::HostNotAllowed { host: with_port })
        }
    }

    /// The signature header for a message.
    pub fn signature(&self, id: &str, timestamp: u64, body: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        Some(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ))
    }

    /// POSTs `body` to `url` with the id `id` (the same on every retry) and,
    /// when traced, the W3C `traceparent` header.
    pub async fn send(
        &self,
        url: &str,
        body: &str,
        id: &str,
        traceparent: Option<&str>,
    ) -> Result<(), QueueError> {
        self.check(url).map_err(|reason| QueueError::Refused {
            queue: url.to_owned(),
            reason,
        })?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(body.to_owned());
        if let Some(signature) = self.signature(id, timestamp, body) {
            request = request.header("webhook-signature", signature);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request
            .send()
            .await
            .map_err(|err| QueueError::Unavailable {
                queue: url.to_owned(),
                message: err.to_string(),
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(QueueError::Unavailable {
                queue: url.to_owned(),
                message: format!("the receiver answered {status}"),
            })
        } else {
            Err(QueueError::Rejected {
                queue: url.to_owned(),
                message: format!("the receiver answered {status}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        // The example of the Standard Webhooks specification.
        let sender = WebhookSender::new(&WebhookConfig {
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
            allowed_hosts: vec!["hooks.example.com".to_owned()],
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sender
                .signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
                .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(sender.check("https://hooks.example.com/x").is_ok());
        assert!(
            sender.check("http://hooks.example.com:8080/x").is_ok(),
            "a bare host allows any port"
        );
        assert!(sender.check("https://evil.example.com/x").is_err());
        assert!(sender.check("not a url").is_err());
        let pinned = WebhookSender::new(&WebhookConfig {
            secret: None,
            allowed_hosts: vec!["api.example.com:443".to_owned()],
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert!(pinned.check("http://api.example.com:443/x").is_ok());
        assert!(
            pinned.check("http://api.example.com:8443/x").is_err(),
            "host:port allows that port only"
        );
        assert!(
            pinned.signature("id", 1, "{}").is_none(),
            "no secret: unsigned"
        );
    }
}
