//! The HTTP benchmark's ceiling: a bare axum handler that parses the same
//! JSON body and returns a constant JSON reply, with no framework around it.
//! It also takes OTLP trace exports (`POST /v1/traces`, answered 200 unread)
//! as the sink of the traced run. `http-ceiling PORT`.

/// mimalloc, as the servers it is compared with, so both sides of the
/// comparison allocate alike and the difference is the framework's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8100".to_owned());
    let app = axum::Router::new()
        .route(
            "/predict_sync",
            post(|Json(_body): Json<Value>| async {
                Json(json!({"status": "success", "error": null, "meta": {}, "value": 1}))
            }),
        )
        .route("/v1/traces", post(|_body: axum::body::Bytes| async {}));
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    axum::serve(listener, app).await
}
