//! Deprecated operations: announced on every response until their sunset, gone after it.
//!
//! An operation is deprecated by declaring a [`Deprecation`] next to its route (its module's
//! `DEPRECATED` list, collected by the composition root). Then, from one table:
//!
//! - until its sunset it answers as before, with `Deprecation: @<unix time>` (RFC 9745),
//!   `Sunset: <HTTP-date>` (RFC 8594) and `Link: <…>; rel="deprecation"`, and each call is
//!   counted in `http_deprecated_requests_total{route}`, so operators see who still calls it;
//! - from its sunset it answers 410 `gone`, whatever the request;
//! - [`document`] marks it `deprecated: true` in the OpenAPI document and describes the headers
//!   and the 410.
//!
//! Nothing here knows which operations are deprecated or why.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode, header};

use crate::problem::{Code, Problem};

/// One deprecated operation, as declared beside its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecation {
    /// `GET`, `POST`, …
    pub method: &'static str,
    /// The route template as the router matches it, e.g. `/api/v1/stats`.
    pub route: &'static str,
    /// When it was deprecated, in Unix seconds.
    pub since: i64,
    /// When it stops working, in Unix seconds; not before `since`.
    pub sunset: i64,
    /// Where its replacement and the migration are described.
    pub link: &'static str,
}

/// Why a table of deprecations cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidDeprecation {
    #[error("{method} {route}: its sunset comes before its deprecation")]
    SunsetBeforeDeprecation { method: &'static str, route: &'static str },
    #[error("{method} {route}: `{what}` is not a valid {field}")]
    Invalid { method: &'static str, route: &'static str, field: &'static str, what: String },
    #[error("{method} {route} is declared twice")]
    Twice { method: &'static str, route: &'static str },
}

/// The headers an operation answers with until its sunset, ready to copy.
#[derive(Debug, Clone)]
struct Announcement {
    route: &'static str,
    sunset: DateTime<Utc>,
    deprecation: HeaderValue,
    sunset_header: HeaderValue,
    link: HeaderValue,
}

/// Every deprecated operation with its announcement: the middleware's state.
#[derive(Debug, Clone, Default)]
pub struct Deprecations(Arc<Vec<(Method, Announcement)>>);

impl Deprecations {
    /// Checks the table: each operation once, a sunset not before its deprecation, times and
    /// links that make valid headers.
    pub fn new(table: &[Deprecation]) -> Result<Self, InvalidDeprecation> {
        let mut operations: Vec<(Method, Announcement)> = Vec::with_capacity(table.len());
        for entry in table {
            let invalid = |field, what: String| InvalidDeprecation::Invalid {
                method: entry.method,
                route: entry.route,
                field,
                what,
            };
            let method =
                Method::from_bytes(entry.method.as_bytes()).map_err(|_| invalid("method", entry.method.into()))?;
            if entry.sunset < entry.since {
                return Err(InvalidDeprecation::SunsetBeforeDeprecation { method: entry.method, route: entry.route });
            }
            let sunset =
                DateTime::from_timestamp(entry.sunset, 0).ok_or_else(|| invalid("sunset", entry.sunset.to_string()))?;
            DateTime::from_timestamp(entry.since, 0)
                .ok_or_else(|| invalid("deprecation time", entry.since.to_string()))?;
            let link = HeaderValue::from_str(&format!("<{}>; rel=\"deprecation\"", entry.link))
                .map_err(|_| invalid("link", entry.link.into()))?;
            let announcement = Announcement {
                route: entry.route,
                sunset,
                deprecation: HeaderValue::from_str(&format!("@{}", entry.since)).expect("digits are a header value"),
                sunset_header: HeaderValue::from_str(&sunset.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
                    .expect("an HTTP-date is a header value"),
                link,
            };
            if operations.iter().any(|(m, known)| *m == method && known.route == entry.route) {
                return Err(InvalidDeprecation::Twice { method: entry.method, route: entry.route });
            }
            operations.push((method, announcement));
        }
        Ok(Self(Arc::new(operations)))
    }

    /// A handful of operations at most: a scan is as fast as a map.
    fn find(&self, method: &Method, route: &str) -> Option<&Announcement> {
        self.0.iter().find(|(m, known)| m == method && known.route == route).map(|(_, announcement)| announcement)
    }
}

/// Announces deprecated operations and refuses those past their sunset (410 `gone`).
pub async fn middleware(State(deprecations): State<Deprecations>, request: Request, next: Next) -> Response {
    if deprecations.0.is_empty() {
        return next.run(request).await;
    }
    let Some(route) = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned()) else {
        return next.run(request).await;
    };
    let Some(announcement) = deprecations.find(request.method(), &route).cloned() else {
        return next.run(request).await;
    };
    metrics::counter!("http_deprecated_requests_total", "route" => announcement.route).increment(1);
    let mut response = if Utc::now() >= announcement.sunset {
        Problem::new(StatusCode::GONE, Code::Gone, "This operation was retired at its sunset; see the Link header.")
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert("deprecation", announcement.deprecation);
    headers.insert("sunset", announcement.sunset_header);
    headers.append(header::LINK, announcement.link);
    response
}

/// Marks every deprecated operation `deprecated: true` in the document, with its headers and
/// its 410 after the sunset.
pub fn document(openapi: utoipa::openapi::OpenApi, table: &[Deprecation]) -> utoipa::openapi::OpenApi {
    if table.is_empty() {
        return openapi;
    }
    let mut document = serde_json::to_value(&openapi).expect("an OpenAPI document serializes");
    for entry in table {
        // `/api/v1/stats/{id}` in the router is `/api/v1/stats/{id}` in the document too.
        let operation = &mut document["paths"][entry.route][entry.method.to_ascii_lowercase()];
        if !operation.is_object() {
            continue;
        }
        let sunset = DateTime::from_timestamp(entry.sunset, 0).map(|at| at.to_rfc3339()).unwrap_or_default();
        operation["deprecated"] = serde_json::Value::Bool(true);
        let note =
            format!("\n\n**Deprecated**; retired at {sunset}, after which it answers 410 `gone`. See {}.", entry.link);
        let description = operation["description"].as_str().unwrap_or_default().to_owned();
        operation["description"] = serde_json::Value::String(description + &note);
        operation["responses"]["410"] = serde_json::json!({"$ref": "#/components/responses/Gone"});
        if let Some(responses) = operation["responses"].as_object_mut() {
            for (status, response) in responses.iter_mut() {
                if status.starts_with('2') && response.is_object() && response.get("$ref").is_none() {
                    response["headers"]["Deprecation"] = header_doc("`@<unix time>` of the deprecation (RFC 9745).");
                    response["headers"]["Sunset"] = header_doc("When the operation stops working (RFC 8594).");
                    response["headers"]["Link"] = header_doc("`<…>; rel=\"deprecation\"`: what replaces it.");
                }
            }
        }
    }
    document["components"]["responses"]["Gone"] = serde_json::json!({
        "description": "`gone`: the operation was retired at its sunset.",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    });
    serde_json::from_value(document).expect("the document stays a valid OpenAPI document")
}

fn header_doc(description: &str) -> serde_json::Value {
    serde_json::json!({"description": description, "schema": {"type": "string"}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    const SOON: i64 = 4_102_444_800; // 2100-01-01

    fn app(table: &[Deprecation]) -> Router {
        let deprecations = Deprecations::new(table).unwrap();
        Router::new()
            .route("/old/{id}", get(|| async { "old" }))
            .route("/new", get(|| async { "new" }))
            .layer(axum::middleware::from_fn_with_state(deprecations, middleware))
    }

    async fn call(app: Router, path: &str) -> Response {
        app.oneshot(http::Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn a_deprecated_operation_answers_with_its_announcement_until_its_sunset() {
        let table = [Deprecation {
            method: "GET",
            route: "/old/{id}",
            since: 1_767_225_600,
            sunset: SOON,
            link: "https://example.com/migrate",
        }];
        let response = call(app(&table), "/old/7").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["deprecation"], "@1767225600");
        assert_eq!(response.headers()["sunset"], "Fri, 01 Jan 2100 00:00:00 GMT");
        assert_eq!(response.headers()["link"], "<https://example.com/migrate>; rel=\"deprecation\"");
        let other = call(app(&table), "/new").await;
        assert!(other.headers().get("deprecation").is_none(), "other operations are untouched");
    }

    #[tokio::test]
    async fn past_its_sunset_an_operation_is_gone() {
        let table = [Deprecation {
            method: "GET",
            route: "/old/{id}",
            since: 1_600_000_000,
            sunset: 1_700_000_000,
            link: "https://example.com/migrate",
        }];
        let response = call(app(&table), "/old/7").await;
        assert_eq!(response.status(), StatusCode::GONE);
        assert_eq!(response.headers()["sunset"], "Tue, 14 Nov 2023 22:13:20 GMT");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "gone");
    }

    #[test]
    fn a_table_is_checked_when_built() {
        let entry = Deprecation { method: "GET", route: "/old", since: 20, sunset: 10, link: "https://example.com" };
        assert_eq!(
            Deprecations::new(&[entry]).unwrap_err(),
            InvalidDeprecation::SunsetBeforeDeprecation { method: "GET", route: "/old" }
        );
        let fine = Deprecation { sunset: 30, ..entry };
        assert!(matches!(Deprecations::new(&[fine, fine]), Err(InvalidDeprecation::Twice { .. })));
        let bad_link = Deprecation { link: "https://example.com/\n", ..fine };
        assert!(matches!(Deprecations::new(&[bad_link]), Err(InvalidDeprecation::Invalid { field: "link", .. })));
    }

    #[test]
    fn the_document_marks_the_operation_deprecated() {
        let mut openapi: utoipa::openapi::OpenApi = serde_json::from_value(serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/old": {"get": {"responses": {"200": {"description": "ok"}}}}},
        }))
        .unwrap();
        let table =
            [Deprecation { method: "GET", route: "/old", since: 10, sunset: SOON, link: "https://example.com" }];
        openapi = document(openapi, &table);
        let value = serde_json::to_value(&openapi).unwrap();
        let operation = &value["paths"]["/old"]["get"];
        assert_eq!(operation["deprecated"], true);
        assert!(operation["responses"]["410"].is_object());
        assert!(operation["responses"]["200"]["headers"]["Sunset"].is_object());
    }
}
