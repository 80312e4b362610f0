//! The OpenAPI 3.1 document, generated from the pipeline's `Input` and
//! `Output` types and modalkit's wire types with schemars.

use modalkit_core::InferencePipeline;
use modalkit_core::wire::{AsyncInput, AsyncOutput, DelayedFailure, InferenceOutput};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::async_jobs::record::JobRecord;

/// Builds the document for a server of pipeline `P` serving `models`, whose
/// API key (if any) is checked in header `auth_header`: with none, no
/// operation declares a security requirement or a 401.
pub(crate) fn document<P: InferencePipeline>(
    title: &str,
    models: &[String],
    auth_header: Option<&str>,
) -> Value {
    let mut doc = full_document::<P>(title, models, auth_header.unwrap_or("x-api-key"));
    if auth_header.is_none() {
        without_auth(&mut doc);
    }
    doc
}

/// Takes the security requirements, the 401 answers and the scheme out of a
/// document, for a server that checks no key.
fn without_auth(doc: &mut Value) {
    if let Some(paths) = doc["paths"].as_object_mut() {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|path| path.values_mut())
        {
            if let Some(operation) = operation.as_object_mut() {
                operation.remove("security");
                if let Some(responses) = operation
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                {
                    responses.remove("401");
                }
            }
        }
    }
    if let Some(components) = doc["components"].as_object_mut() {
        components.remove("securitySchemes");
    }
}

fn full_document<P: InferencePipeline>(title: &str, models: &[String], auth_header: &str) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let mut schema = |f: &mut dyn FnMut(&mut schemars::SchemaGenerator) -> schemars::Schema| {
        f(&mut generator).to_value()
    };
    let input = schema(&mut |g| g.subschema_for::<P::Input>());
    let output = schema(&mut |g| g.subschema_for::<InferenceOutput<P::Output>>());
    let async_input = schema(&mut |g| g.subschema_for::<AsyncInput<P::Input>>());
    let async_output = schema(&mut |g| g.subschema_for::<AsyncOutput>());
    let failure = schema(&mut |g| g.subschema_for::<DelayedFailure>());
    let job = schema(&mut |g| g.subschema_for::<JobRecord>());
    let error = schema(&mut |g| g.subschema_for::<ErrorBody>());
    let mut components = generator.take_definitions(true);
    components.insert("DelayedFailure".to_owned(), failure);

    let model_param = json!({
        "name": "model_name", "in": "query", "required": models.len() > 1,
        "schema": {"type": "string", "enum": models},
        "description": "Which model to run; optional when one model is served."
    });
    let errors = |codes: &[&str]| -> Value {
        codes
            .iter()
            .map(|code| (code.to_string(), json!({"description": describe(code), "content": {"application/json": {"schema": error.clone()}}})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let with_errors = |ok: (&str, Value), codes: &[&str]| -> Value {
        let mut responses = errors(codes);
        if let Value::Object(map) = &mut responses {
            map.insert(ok.0.to_owned(), ok.1);
        }
        responses
    };
    let predict_errors = [
        "400", "401", "404", "408", "413", "415", "422", "500", "503", "504",
    ];
    let security = json!([{"apiKey": []}]);

    json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION"),
                 "description": "modalkit-compatible inference API served by modalkit-rs."},
        "paths": {
            "/predict_sync": {"post": {
                "summary": "Run one message through the model and wait for its result.",
                "operationId": "predict_sync", "parameters": [model_param], "security": security,
                "requestBody": {"required": true, "content": {"application/json": {"schema": input}}},
                "responses": with_errors(("200", json!({"description": "The item's result (status may be \"error\" for an item the model rejected).",
                    "content": {"application/json": {"schema": output}}})), &predict_errors)
            }},
            "/predict_batch": {"post": {
                "summary": "Run an array of messages; results come back in order.",
                "operationId": "predict_batch", "parameters": [model_param], "security": security,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "array", "items": input}}}},
                "responses": with_errors(("200", json!({"description": "One result per message, in order.",
                    "content": {"application/json": {"schema": {"type": "array", "items": output}}}})), &predict_errors)
            }},
            "/predict_async": {"post": {
                "summary": "Queue a message; its result goes to success_queue / failure_queue and GET /jobs/{job_id}.",
                "operationId": "predict_async", "security": security,
                "parameters": [model_param, {"name": "Idempotency-Key", "in": "header", "required": false,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "Resubmitting the same request with the same key within the job TTL returns the first job_id and computes once; the key with another request is a 422."}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": async_input}}},
                "responses": with_errors(("200", json!({"description": "Accepted (200, as modalkit answers).",
                    "content": {"application/json": {"schema": async_output}},
                    // The job id leads to the job's routes (clients and
                    // stateful fuzzers follow these).
                    "links": {
                        "GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/job_id"}},
                        "CancelJob": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/job_id"}}
                    }})), &["400", "401", "404", "408", "413", "415", "422", "503"])
            }},
            "/jobs/{job_id}": {"get": {
                "summary": "An async job's state and result.", "operationId": "get_job", "security": security,
                "parameters": [{"name": "job_id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": with_errors(("200", json!({"description": "The job.", "content": {"application/json": {"schema": job.clone()}}})), &["400", "401", "404", "503"])
            }},
            "/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a queued job: it is never computed and its failure queue gets a DelayedFailure.", "operationId": "cancel_job", "security": security,
                "parameters": [{"name": "job_id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": with_errors(("200", json!({"description": "The cancelled job.", "content": {"application/json": {"schema": job}}})), &["400", "401", "404", "409", "503"])
            }},
            "/health": {"get": {"summary": "Liveness: the process serves.", "operationId": "health",
                "responses": {"200": {"description": "Alive."}}}},
            "/ready": {"get": {"summary": "Readiness: every model loaded and taking work.", "operationId": "ready",
                "responses": {"200": {"description": "Ready."}, "503": {"description": "Loading, shutting down, or the device failed."}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {}}}}}}
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": auth_header,
                "description": "The API key of auth_config.api_key or ssm_key, in auth_config.auth_header."}}
        }
    })
}

fn describe(code: &str) -> &'static str {
    match code {
        "400" => "Malformed JSON, empty body, bad query or job id.",
        "401" => "Missing or wrong API key.",
        "404" => "Unknown model or job.",
        "408" => {
            "The body did not arrive within body_read_timeout_seconds of the head; the connection is closed."
        }
        "409" => "The job is running or ended; only a queued job can be cancelled.",
        "413" => "Body or batch too large.",
        "415" => "Content-Type is not JSON.",
        "422" => {
            "The message does not fit the input schema, fails validation, the pipeline found it invalid, or the Idempotency-Key was used with another request."
        }
        "500" => "The pipeline failed on this item.",
        "503" => {
            "Overloaded or too many open connections (see Retry-After), shutting down, or the device failed."
        }
        "504" => "The request's deadline passed.",
        _ => "Error.",
    }
}

/// The body of every error response.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    code: String,
    /// Human-readable message.
    message: String,
    /// Structured details (field paths, limits), or null.
    details: Value,
}
