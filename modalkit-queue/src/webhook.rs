//! `WebhookSender`: async results POSTed to the URL a job names as its
//! success or failure "queue", signed per the Standard Webhooks scheme
//! (<https://www.standardwebhooks.com>): `webhook-id` (the same on every
//! retry of one result), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//! 429, 5xx, timeouts and connection errors are retried by [`crate::Delivery`];
//! other answers are final (dead-lettered). Only hosts on the allow-list are
//! called, so a request cannot make the server call arbitrary hosts; an
//! internal address (loopback, private, link-local) only when its host is
//! listed by name, not through `*`, checked again on every connection so a
//! name cannot be re-pointed inside; and redirects are never followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(OutsideOnly {
                allowed_hosts: config.allowed_hosts.clone(),
            }))
            .build()
            .map_err(|err| setup(err.to_string()))?;
        Ok(WebhookSender {
            client,
            key,
            allowed_hosts: config.allowed_hosts.clone(),
        })
    }

    /// Whether results may go to `url`: a valid http(s) URL whose host is on
    /// the allow-list, and not an internal address unless listed by name.
    /// The error says why not. (A host name is resolved when it is sent.)
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
        if listed(&self.allowed_hosts, host, Some(&with_port)) {
            return Ok(());
        }
        if !self.allowed_hosts.iter().any(|allowed| allowed == "*") {
            return Err(WebhookRefusal::HostNotAllowed { host: with_port });
        }
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(address) if is_internal(address) => Err(WebhookRefusal::InternalAddress {
                host: with_port,
                address,
            }),
            _ => Ok(()),
        }
    }

    /// A host name allowed through `*` must not resolve inside the network;
    /// refused for good when it does. (The connection's own resolution
    /// drops internal addresses too, so a name re-pointed in between is no
    /// way in either.)
    async fn check_resolved(&self, url: &str) -> Result<(), QueueError> {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        let (Some(url::Host::Domain(name)), Some(port)) =
            (parsed.host(), parsed.port_or_known_default())
        else {
            return Ok(());
        };
        if listed(&self.allowed_hosts, name, None) {
            return Ok(());
        }
        let addresses =
            tokio::net::lookup_host((name, port))
                .await
                .map_err(|err| QueueError::Unavailable {
                    queue: url.to_owned(),
                    message: format!("cannot resolve {name}: {err}"),
                })?;
        for address in addresses {
            if is_internal(address.ip()) {
                return Err(QueueError::Refused {
                    queue: url.to_owned(),
                    reason: WebhookRefusal::InternalAddress {
                        host: format!("{name}:{port}"),
                        address: address.ip(),
                    },
                });
            }
        }
        Ok(())
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
        self.check_resolved(url).await?;
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
        } else if status.is_redirection() {
            Err(QueueError::Refused {
                queue: url.to_owned(),
                reason: WebhookRefusal::Redirect {
                    status: status.to_string(),
                },
            })
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

/// Whether `host` (or `host:port`, when given) is on the allow-list by
/// name, not only through `*`. Without a port, any entry for the host
/// counts.
fn listed(allowed_hosts: &[String], host: &str, with_port: Option<&str>) -> bool {
    allowed_hosts.iter().any(|allowed| match with_port {
        Some(with_port) => allowed == host || allowed == with_port,
        None => {
            allowed == host
                || allowed
                    .strip_prefix(host)
                    .is_some_and(|rest| rest.starts_with(':'))
        }
    })
}

/// Addresses inside the network: loopback, private (RFC 1918, unique
/// local), link-local (169.254.0.0/16: the cloud metadata address; fe80::/10),
/// carrier-grade NAT, unspecified, broadcast and multicast, and IPv4 ones
/// written as IPv6.
fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(ip) => {
            let [first, second, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || first == 0
                || (first == 100 && (second & 0xc0) == 64)
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// The webhook client's name resolution: a host not listed by name gets
/// only its addresses outside the network.
struct OutsideOnly {
    allowed_hosts: Vec<String>,
}

impl reqwest::dns::Resolve for OutsideOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let keep_internal = listed(&self.allowed_hosts, &host, None);
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| keep_internal || !is_internal(address.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(resolved.into_iter()) as reqwest::dns::Addrs)
        })
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

    #[test]
    fn internal_addresses_are_told_apart_from_public_ones() {
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_wildcard_does_not_reach_internal_addresses_a_listing_does() {
        let any = WebhookSender::new(&WebhookConfig {
            secret: None,
            allowed_hosts: vec!["*".to_owned()],
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert!(any.check("https://hooks.example.com/x").is_ok());
        for internal in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
        ] {
            assert!(
                matches!(
                    any.check(internal),
                    Err(WebhookRefusal::InternalAddress { .. })
                ),
                "{internal}"
            );
        }
        let listed_loopback = WebhookSender::new(&WebhookConfig {
            secret: None,
            allowed_hosts: vec!["*".to_owned(), "127.0.0.1:8080".to_owned()],
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert!(listed_loopback.check("http://127.0.0.1:8080/x").is_ok());
        assert!(listed_loopback.check("http://127.0.0.1:9090/x").is_err());
        assert!(listed(&["localhost:8080".to_owned()], "localhost", None));
        assert!(!listed(&["localhostile".to_owned()], "localhost", None));
    }
}
