//! `/openapi.json` and `/docs`, an interactive page over it. The page loads
//! Swagger UI's script from a CDN in the browser; nothing is downloaded at
//! build time and `/openapi.json` itself is self-contained.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use modalkit_core::InferencePipeline;

use crate::state::AppState;

/// The OpenAPI document.
pub(crate) async fn openapi_json<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
}

/// The interactive API page.
pub(crate) async fn docs_page() -> impl IntoResponse {
    Html(DOCS_HTML)
}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>modalkit-rs API</title>
  <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="docs"><noscript>This page needs JavaScript; the raw document is at <a href="openapi.json">/openapi.json</a>.</noscript></div>
  <script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js" crossorigin></script>
  <script>
    window.onload = () => {
      if (!window.SwaggerUIBundle) {
        document.getElementById('docs').innerHTML =
          '<p>Could not load Swagger UI from unpkg.com. The OpenAPI document is at <a href="openapi.json">/openapi.json</a>.</p>';
        return;
      }
      window.ui = SwaggerUIBundle({ url: 'openapi.json', dom_id: '#docs' });
    };
  </script>
</body>
</html>
"#;
