//! Responses to writes, and the optimistic-concurrency loop behind every `PATCH` and `DELETE`.

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use orderly_kit::Problem;
use orderly_kit::conditional::{body_of, etag_of, has_if_match, http_date};
use serde_json::Value;

use crate::error::ApiResult;

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

/// What one attempt at a conditional write produced.
pub enum Attempt<T> {
    /// The write happened (or was a no-op) and produced this.
    Done(T),
    /// Another writer changed the row between our read and our conditional write.
    LostRace,
}

/// Runs `attempt` (load, check `If-Match`, write where `version` is unchanged) until it is not
/// overtaken by a concurrent writer. With `If-Match` the client asserted a version, so a lost
/// race is 412 at once; without it the write is retried on the fresh row.
pub async fn optimistic_update<T, F, Fut>(request_headers: &HeaderMap, mut attempt: F) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<Attempt<T>>>,
{
    for _ in 0..5 {
        match attempt().await? {
            Attempt::Done(result) => return Ok(result),
            Attempt::LostRace if has_if_match(request_headers) => {
                return Err(Problem::precondition_failed().into());
            }
            Attempt::LostRace => continue,
        }
    }
    Err(Problem::conflict("concurrent_update", "The resource is being changed concurrently; retry.").into())
}
