//! Responses to writes: the new representation with its validators, never cached.

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode, header};
use orderly_kit::conditional::{body_of, etag_of, http_date};
use serde_json::Value;

/// 201 with `Location`, the new representation and its validators.
pub fn created(location: String, value: &Value, last_modified: DateTime<Utc>) -> Response {
    let mut response = written(value, last_modified);
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// 200 with the representation after a write, its `ETag` and `Last-Modified`, never stored.
pub fn written(value: &Value, last_modified: DateTime<Utc>) -> Response {
    let body = body_of(value);
    let etag = etag_of(&body);
    let mut response = ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex etag"));
    headers.insert(header::LAST_MODIFIED, HeaderValue::from_str(&http_date(last_modified)).expect("ascii date"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
