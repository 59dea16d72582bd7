//! Deprecated operations: announced on every response until their sunset, gone after it.
//!
//! An operation is deprecated where it is declared: its `#[utoipa::path]` carries an
//! [`EXTENSION`] (`x-deprecation`) with when it was deprecated, its sunset and a link to what
//! replaces it:
//!
//! ```text
//! #[utoipa::path(get, path = "/stats", …, extensions(
//!     ("x-deprecation" = json!({"since": "2026-12-01T00:00:00Z", "sunset": "2027-06-01T00:00:00Z",
//!                               "link": "https://example.com/changelog#stats"}))
//! ))]
//! ```
//!
//! [`declared`] reads every such operation from the document. Then:
//!
//! - until its sunset it answers as before, with `Deprecation: @<unix time>` (RFC 9745),
//!   `Sunset: <HTTP-date>` (RFC 8594) and `Link: <…>; rel="deprecation"`, and each call is
//!   counted in `http_deprecated_requests_total{route}`, so operators see who still calls it;
//! - from its sunset it answers 410 `gone`, whatever the request;
//! - the document marks it `deprecated: true` and describes the headers and the 410.
//!
//! Nothing here knows which operations are deprecated or why.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode, header};

use crate::problem::{Code, Problem};

/// The operation extension that declares a deprecation: `{"since", "sunset", "link"}`, the two
/// times in RFC 3339.
pub const EXTENSION: &str = "x-deprecation";

/// One deprecated operation, as declared beside its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    pub method: Method,
    /// The route template as the router matches it, e.g. `/api/v1/stats`.
    pub route: String,
    /// When it was deprecated.
    pub since: DateTime<Utc>,
    /// When it stops working; not before `since`.
    pub sunset: DateTime<Utc>,
    /// Where its replacement and the migration are described.
    pub link: String,
}

/// Why a declared deprecation cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidDeprecation {
    #[error("{operation}: its sunset comes before its deprecation")]
    SunsetBeforeDeprecation { operation: String },
    #[error("{operation}: `{what}` is not a valid {field}")]
    Invalid { operation: String, field: &'static str, what: String },
}

/// The headers an operation answers with until its sunset, ready to copy.
#[derive(Debug, Clone)]
struct Announcement {
    route: String,
    sunset: DateTime<Utc>,
    deprecation: HeaderValue,
    sunset_header: HeaderValue,
    link: HeaderValue,
}

/// Every deprecated operation with its announcement: the middleware's state.
#[derive(Debug, Clone, Default)]
pub struct Deprecations(Arc<Vec<(Method, Announcement)>>);

impl Deprecations {
    /// The operations' announcements; each entry must be valid (see [`declared`]).
    fn new(table: &[Deprecation]) -> Result<Self, InvalidDeprecation> {
        let mut operations = Vec::with_capacity(table.len());
        for entry in table {
            let operation = format!("{} {}", entry.method, entry.route);
            if entry.sunset < entry.since {
                return Err(InvalidDeprecation::SunsetBeforeDeprecation { operation });
            }
            let link = HeaderValue::from_str(&format!("<{}>; rel=\"deprecation\"", entry.link))
                .map_err(|_| InvalidDeprecation::Invalid { operation, field: "link", what: entry.link.clone() })?;
            let announcement = Announcement {
                route: entry.route.clone(),
                sunset: entry.sunset,
                deprecation: HeaderValue::from_str(&format!("@{}", entry.since.timestamp()))
                    .expect("digits are a header value"),
                sunset_header: HeaderValue::from_str(&entry.sunset.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
                    .expect("an HTTP-date is a header value"),
                link,
            };
            operations.push((entry.method.clone(), announcement));
        }
        Ok(Self(Arc::new(operations)))
    }

    /// A handful of operations at most: a scan is as fast as a map.
    fn find(&self, method: &Method, route: &str) -> Option<&Announcement> {
        self.0.iter().find(|(m, known)| m == method && known.route == route).map(|(_, announcement)| announcement)
    }
}

/// The deprecations the document's operations declare, and the document with each of them
/// marked `deprecated: true`, its headers and its 410 described.
pub fn declared(
    openapi: utoipa::openapi::OpenApi,
) -> Result<(utoipa::openapi::OpenApi, Deprecations), InvalidDeprecation> {
    if !declares_any(&openapi) {
        return Ok((openapi, Deprecations::default()));
    }
    let mut document = serde_json::to_value(&openapi).expect("an OpenAPI document serializes");
    let mut table = Vec::new();
    if let Some(paths) = document["paths"].as_object_mut() {
        for (route, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, operation) in item.iter_mut() {
                let Some(declaration) = operation.get(EXTENSION) else { continue };
                let entry = parse(route, method, declaration)?;
                mark(operation, &entry);
                table.push(entry);
            }
        }
    }
    let deprecations = Deprecations::new(&table)?;
    document["components"]["responses"]["Gone"] = serde_json::json!({
        "description": "`gone`: the operation was retired at its sunset.",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    });
    let openapi = serde_json::from_value(document).expect("the document stays a valid OpenAPI document");
    Ok((openapi, deprecations))
}

/// Whether any operation carries a declaration: most documents have none, and then nothing
/// is rewritten.
fn declares_any(openapi: &utoipa::openapi::OpenApi) -> bool {
    openapi.paths.paths.values().any(|item| {
        [&item.get, &item.put, &item.post, &item.delete, &item.options, &item.head, &item.patch, &item.trace]
            .into_iter()
            .flatten()
            .any(|operation| operation.extensions.as_ref().is_some_and(|extensions| extensions.contains_key(EXTENSION)))
    })
}

fn parse(route: &str, method: &str, declaration: &serde_json::Value) -> Result<Deprecation, InvalidDeprecation> {
    let operation = format!("{} {route}", method.to_ascii_uppercase());
    let text = |field: &'static str| {
        declaration[field].as_str().map(str::to_owned).ok_or_else(|| InvalidDeprecation::Invalid {
            operation: operation.clone(),
            field,
            what: declaration[field].to_string(),
        })
    };
    let time = |field: &'static str| {
        let raw = text(field)?;
        DateTime::parse_from_rfc3339(&raw).map(|at| at.to_utc()).map_err(|_| InvalidDeprecation::Invalid {
            operation: operation.clone(),
            field,
            what: raw,
        })
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
        InvalidDeprecation::Invalid { operation: operation.clone(), field: "method", what: method.to_owned() }
    })?;
    Ok(Deprecation {
        method,
        route: route.to_owned(),
        since: time("since")?,
        sunset: time("sunset")?,
        link: text("link")?,
    })
}

/// Marks one operation deprecated in the document: the flag, a note, its headers, its 410.
fn mark(operation: &mut serde_json::Value, entry: &Deprecation) {
    operation["deprecated"] = serde_json::Value::Bool(true);
    let note = format!(
        "\n\n**Deprecated**; retired at {}, after which it answers 410 `gone`. See {}.",
        entry.sunset.to_rfc3339(),
        entry.link
    );
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
    metrics::counter!("http_deprecated_requests_total", "route" => announcement.route.clone()).increment(1);
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

    /// A document whose `GET /old/{id}` declares `declaration`.
    fn document_declaring(declaration: serde_json::Value) -> utoipa::openapi::OpenApi {
        serde_json::from_value(serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/old/{id}": {"get": {"responses": {"200": {"description": "ok"}}, "x-deprecation": declaration}},
                "/new": {"get": {"responses": {"200": {"description": "ok"}}}},
            },
        }))
        .unwrap()
    }

    fn app(declaration: serde_json::Value) -> Router {
        let (_, deprecations) = declared(document_declaring(declaration)).unwrap();
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
        let declaration = serde_json::json!({
            "since": "2026-01-01T00:00:00Z", "sunset": "2100-01-01T00:00:00Z", "link": "https://example.com/migrate",
        });
        let response = call(app(declaration.clone()), "/old/7").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["deprecation"], "@1767225600");
        assert_eq!(response.headers()["sunset"], "Fri, 01 Jan 2100 00:00:00 GMT");
        assert_eq!(response.headers()["link"], "<https://example.com/migrate>; rel=\"deprecation\"");
        let other = call(app(declaration), "/new").await;
        assert!(other.headers().get("deprecation").is_none(), "other operations are untouched");
    }

    #[tokio::test]
    async fn past_its_sunset_an_operation_is_gone() {
        let declaration = serde_json::json!({
            "since": "2020-09-13T12:26:40Z", "sunset": "2023-11-14T22:13:20Z", "link": "https://example.com/migrate",
        });
        let response = call(app(declaration), "/old/7").await;
        assert_eq!(response.status(), StatusCode::GONE);
        assert_eq!(response.headers()["sunset"], "Tue, 14 Nov 2023 22:13:20 GMT");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "gone");
    }

    #[test]
    fn a_declaration_is_checked() {
        let declaring = |since: &str, sunset: &str, link: &str| {
            declared(document_declaring(serde_json::json!({"since": since, "sunset": sunset, "link": link})))
                .map(|_| ())
        };
        let early = "2026-01-01T00:00:00Z";
        let late = "2027-01-01T00:00:00Z";
        assert_eq!(
            declaring(late, early, "https://example.com"),
            Err(InvalidDeprecation::SunsetBeforeDeprecation { operation: "GET /old/{id}".into() })
        );
        assert!(declaring(early, late, "https://example.com").is_ok());
        let bad_link = declaring(early, late, "https://example.com/\n");
        assert!(matches!(bad_link, Err(InvalidDeprecation::Invalid { field: "link", .. })));
        let bad_time = declaring("next tuesday", late, "https://example.com");
        assert!(matches!(bad_time, Err(InvalidDeprecation::Invalid { field: "since", .. })));
        let missing = declared(document_declaring(serde_json::json!({"since": early, "link": "https://example.com"})));
        assert!(matches!(missing, Err(InvalidDeprecation::Invalid { field: "sunset", .. })));
    }

    #[test]
    fn the_document_marks_the_operation_deprecated() {
        let declaration = serde_json::json!({
            "since": "2026-01-01T00:00:00Z", "sunset": "2100-01-01T00:00:00Z", "link": "https://example.com",
        });
        let (openapi, _) = declared(document_declaring(declaration)).unwrap();
        let value = serde_json::to_value(&openapi).unwrap();
        let operation = &value["paths"]["/old/{id}"]["get"];
        assert_eq!(operation["deprecated"], true);
        assert!(operation["responses"]["410"].is_object());
        assert!(operation["responses"]["200"]["headers"]["Sunset"].is_object());
        assert!(value["components"]["responses"]["Gone"].is_object());
        assert!(value["paths"]["/new"]["get"].get("deprecated").is_none());
    }

    /// Declared as the module documentation shows, through utoipa's own macros.
    #[utoipa::path(
        get, path = "/old/{id}", params(("id" = u32, Path)), responses((status = 200, description = "ok")),
        extensions(("x-deprecation" = json!({
            "since": "2026-12-01T00:00:00Z", "sunset": "2100-01-01T00:00:00Z", "link": "https://example.com/m"
        })))
    )]
    #[allow(dead_code)]
    async fn old() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(old))]
    struct Declaring;

    #[test]
    fn a_declaration_beside_a_route_is_read_from_its_operation() {
        let (openapi, deprecations) = declared(<Declaring as utoipa::OpenApi>::openapi()).unwrap();
        let announcement = deprecations.find(&Method::GET, "/old/{id}").expect("the declared operation");
        assert_eq!(announcement.deprecation, "@1796083200");
        assert_eq!(announcement.link, "<https://example.com/m>; rel=\"deprecation\"");
        assert_eq!(serde_json::to_value(&openapi).unwrap()["paths"]["/old/{id}"]["get"]["deprecated"], true);
    }

    #[test]
    fn a_document_without_declarations_is_unchanged() {
        let openapi: utoipa::openapi::OpenApi = serde_json::from_value(serde_json::json!({
            "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "paths": {"/new": {"get": {"responses": {"200": {"description": "ok"}}}}},
        }))
        .unwrap();
        let before = serde_json::to_value(&openapi).unwrap();
        let (after, deprecations) = declared(openapi).unwrap();
        assert_eq!(serde_json::to_value(&after).unwrap(), before);
        assert!(deprecations.0.is_empty());
    }
}
