//! Responses to writes: the new representation with its validators, never cached.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode, header};
use orderly_kit::conditional::{body_of, etag_of, http_date};
use serde::Serialize;
use serde_json::Value;

/// The response to a write, rendered: what is sent, and what an idempotency key keeps.
#[derive(Debug, Clone)]
pub struct Written {
    pub status: StatusCode,
    pub location: Option<String>,
    /// The JSON body.
    pub body: Bytes,
    pub last_modified: DateTime<Utc>,
}

impl Written {
    /// 201 with `Location` and the new representation.
    pub fn created<T: Serialize + ?Sized>(location: String, value: &T, last_modified: DateTime<Utc>) -> Self {
        Self { status: StatusCode::CREATED, location: Some(location), body: body_of(value), last_modified }
    }

    /// 200 with the representation after a write.
    pub fn ok<T: Serialize + ?Sized>(value: &T, last_modified: DateTime<Utc>) -> Self {
        Self { status: StatusCode::OK, location: None, body: body_of(value), last_modified }
    }
}

impl IntoResponse for Written {
    /// The body with its `ETag` and `Last-Modified`, never stored by caches.
    fn into_response(self) -> Response {
        let etag = etag_of(&self.body);
        let mut response =
            (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.body)
                .into_response();
        let headers = response.headers_mut();
        headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex etag"));
        headers
            .insert(header::LAST_MODIFIED, HeaderValue::from_str(&http_date(self.last_modified)).expect("ascii date"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(location) = self.location.and_then(|location| HeaderValue::from_str(&location).ok()) {
            headers.insert(header::LOCATION, location);
        }
        response
    }
}

/// 201 with `Location`, the new representation and its validators.
pub fn created(location: String, value: &Value, last_modified: DateTime<Utc>) -> Response {
    Written::created(location, value, last_modified).into_response()
}

/// 200 with the representation after a write, its `ETag` and `Last-Modified`, never stored.
pub fn written(value: &Value, last_modified: DateTime<Utc>) -> Response {
    Written::ok(value, last_modified).into_response()
}
