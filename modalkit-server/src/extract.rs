//! Reading request bodies and the `model_name` parameter, turning every
//! malformed input into a precise [`ApiError`] instead of axum's plain-text
//! rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use garde::Validate;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A request body that must be JSON: checked content type, size limit, and
/// syntax. The typed parsing happens in [`parse_value`] so errors can carry
/// a path prefix.
pub(crate) struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match request.headers().get(header::CONTENT_TYPE) {
            Some(ct) if is_json(ct.as_bytes()) => {}
            Some(other) => {
                return Err(ApiError::UnsupportedMediaType(
                    String::from_utf8_lossy(other.as_bytes()).into_owned(),
                ));
            }
            None => {
                return Err(ApiError::UnsupportedMediaType(
                    "no Content-Type header".to_owned(),
                ));
            }
        }
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge(limit)
                } else if let Some(after) = crate::connections::body_timeout_in(&rejection) {
                    ApiError::BodyReadTimeout(after.as_secs_f64())
                } else {
                    ApiError::InvalidJson(format!("could not read the request body: {rejection}"))
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::InvalidJson(
                "request body is empty; expected JSON".to_owned(),
            ));
        }
        Ok(JsonBody(bytes))
    }
}

/// The body limit, put in request extensions by the router so the error can
/// state it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub usize);

/// Whether a `Content-Type` is JSON: `application/json` or
/// `application/*+json`, any case, parameters ignored (compared in place:
/// this runs on every request).
fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let starts = |prefix: &[u8]| {
        essence.len() >= prefix.len() && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let ends = |suffix: &[u8]| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    essence.eq_ignore_ascii_case(b"application/json") || (starts(b"application/") && ends(b"+json"))
}

impl JsonBody {
    /// Parses the body as untyped JSON (syntax errors only).
    pub(crate) fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.0).map_err(|err| syntax_error(&err))
    }

    /// Parses the body straight into `T`.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let mut deserializer = serde_json::Deserializer::from_slice(&self.0);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_data() {
                ApiError::InvalidBody {
                    path: clean_path(&path, ""),
                    message: data_message(&clean_path(&path, ""), &inner),
                }
            } else {
                syntax_error(&inner)
            }
        })?;
        deserializer.end().map_err(|err| syntax_error(&err))?;
        Ok(value)
    }
}

/// Converts a JSON value into `T`, naming the failing field under `prefix`.
pub(crate) fn parse_value<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = clean_path(&err.path().to_string(), prefix);
        let inner = err.into_inner();
        ApiError::InvalidBody {
            message: data_message(&path, &inner),
            path,
        }
    })
}

/// Runs garde validation, naming failing fields under `prefix`.
pub(crate) fn validate<T: Validate>(value: &T, prefix: &str) -> Result<(), ApiError>
where
    T::Context: Default,
{
    value.validate().map_err(|report| {
        ApiError::Validation(
            report
                .iter()
                .map(|(path, error)| (clean_path(&path.to_string(), prefix), error.to_string()))
                .collect(),
        )
    })
}

fn clean_path(path: &str, prefix: &str) -> String {
    let path = if path == "." { "" } else { path };
    match (prefix.is_empty(), path.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => path.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn data_message(path: &str, error: &serde_json::Error) -> String {
    // serde_json appends " at line 1 column 12"; the path is more useful.
    let text = error.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    if path.is_empty() {
        text
    } else {
        format!("{path}: {text}")
    }
}

fn syntax_error(error: &serde_json::Error) -> ApiError {
    if error.is_eof() {
        ApiError::InvalidJson(format!("request body is truncated JSON: {error}"))
    } else {
        ApiError::InvalidJson(format!("request body is not valid JSON: {error}"))
    }
}

/// `?model_name=...`, resolved against the served models.
pub(crate) fn resolve_model<'a>(
    query: Option<&str>,
    models: &'a [String],
) -> Result<&'a str, ApiError> {
    let mut requested = None;
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "model_name" {
                let decoded = percent_decode(value).ok_or_else(|| {
                    ApiError::InvalidQuery(format!(
                        "model_name is not valid percent-encoded UTF-8: {value}"
                    ))
                })?;
                requested = Some(decoded);
            }
        }
    }
    match requested {
        Some(name) => models
            .iter()
            .find(|m| **m == name)
            .map(String::as_str)
            .ok_or_else(|| ApiError::UnknownModel(name, models.to_vec())),
        None if models.len() == 1 => Ok(models[0].as_str()),
        None => Err(ApiError::ModelRequired(models.to_vec())),
    }
}

/// A query value as forms encode it: `+` is a space, `%XX` a byte; the
/// bytes must be UTF-8. (A `%` not followed by two hex digits stays as it
/// is, as browsers and `form_urlencoded` read it.)
fn percent_decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_resolution() {
        let one = vec!["m".to_owned()];
        let two = vec!["a".to_owned(), "b c".to_owned()];
        assert_eq!(resolve_model(None, &one).ok(), Some("m"));
        assert_eq!(
            resolve_model(Some("model_name=b%20c"), &two).ok(),
            Some("b c")
        );
        assert!(matches!(
            resolve_model(None, &two),
            Err(ApiError::ModelRequired(_))
        ));
        assert!(matches!(
            resolve_model(Some("model_name=z"), &one),
            Err(ApiError::UnknownModel(..))
        ));
        assert!(matches!(
            resolve_model(Some("model_name=%ff"), &one),
            Err(ApiError::InvalidQuery(_))
        ));
        assert_eq!(
            resolve_model(Some("model_name=b+c"), &two).ok(),
            Some("b c")
        );
        let plus = vec!["a+b".to_owned()];
        assert_eq!(
            resolve_model(Some("model_name=a%2Bb"), &plus).ok(),
            Some("a+b")
        );
    }

    #[test]
    fn paths_are_prefixed() {
        assert_eq!(clean_path("text", "message"), "message.text");
        assert_eq!(clean_path("[2].text", ""), "[2].text");
        assert_eq!(clean_path(".", "message"), "message");
        assert_eq!(clean_path("text", "[3]"), "[3].text");
    }

    #[test]
    fn json_content_types_are_recognised_in_any_case_with_parameters() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;q=1",
            "application/vnd.api+json",
            "APPLICATION/PROBLEM+JSON",
        ] {
            assert!(is_json(json.as_bytes()), "{json}");
        }
        for other in [
            "text/plain",
            "application/jsonx",
            "json",
            "text/x+json",
            "",
            "application/json-seq",
        ] {
            assert!(!is_json(other.as_bytes()), "{other}");
        }
    }
}
