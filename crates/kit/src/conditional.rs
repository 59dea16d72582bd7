//! Strong ETags, `Last-Modified`, conditional GETs (304) and `If-Match` preconditions (412),
//! with the `Cache-Control` and `Vary` each kind of read carries.
//!
//! The ETag is a digest of the exact bytes sent, so it changes when, and only when, the
//! representation changes — including under `fields=` selection, which yields a different
//! representation and therefore a different tag.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::problem::Problem;

/// How a response may be cached, and what it varies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheControl {
    /// Anyone's cache may keep it for `max_age` seconds (public catalog reads).
    Public { max_age: u32 },
    /// Only the caller's cache, revalidated on every use (per-user reads).
    Private,
    /// Only the caller's cache, for `max_age` seconds (per-user figures computed periodically).
    PrivateFor { max_age: u32 },
    /// Never stored (writes, errors, secrets).
    NoStore,
}

impl CacheControl {
    pub fn apply(self, headers: &mut HeaderMap) {
        let (cache_control, vary) = match self {
            Self::Public { max_age } => (format!("public, max-age={max_age}"), "Accept-Encoding"),
            Self::Private => ("private, no-cache".to_owned(), "Authorization, Accept-Encoding"),
            Self::PrivateFor { max_age } => (format!("private, max-age={max_age}"), "Authorization, Accept-Encoding"),
            Self::NoStore => ("no-store".to_owned(), "Authorization, Accept-Encoding"),
        };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(&cache_control).expect("ascii"));
        headers.insert(header::VARY, HeaderValue::from_static(vary));
    }
}

/// A strong entity tag: quoted hex of the 128-bit XXH3 hash of the body. It tells versions
/// of one resource apart, which needs no cryptographic hash (a body is the server's own
/// rendering, not chosen by whoever compares tags), and costs a few percent of a SHA-256.
pub fn etag_of(body: &[u8]) -> String {
    let hash = xxhash_rust::xxh3::xxh3_128(body);
    format!("\"{hash:032x}\"")
}

/// Serializes a resource exactly as a GET would send it (a representation's own type, or the
/// `Value` it renders to when fields are selected: the bytes are the same).
pub fn body_of<T: serde::Serialize + ?Sized>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("representations serialize"))
}

/// Formats an RFC 9110 HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`). The form has four-digit
/// years from 1970 on; times outside it are clamped into it.
pub fn http_date(time: DateTime<Utc>) -> String {
    let last = DateTime::from_timestamp(253_402_300_799, 0).expect("the last second of year 9999");
    httpdate::fmt_http_date(time.clamp(DateTime::UNIX_EPOCH, last).into())
}

/// Reads an HTTP-date in any of the three forms RFC 9110 asks recipients to accept.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    httpdate::parse_http_date(value.trim()).ok().map(DateTime::<Utc>::from)
}

/// Answers a single-resource GET: 304 when the client's copy is current, else 200 with the body.
/// Both carry the same `ETag`, `Last-Modified`, `Cache-Control` and `Vary`.
pub fn conditional_response(
    request_headers: &HeaderMap,
    value: &Value,
    last_modified: DateTime<Utc>,
    cache: CacheControl,
) -> Response {
    let body = body_of(value);
    let etag = etag_of(&body);
    prepared_conditional_response(request_headers, body, &etag, last_modified, cache)
}

/// As [`conditional_response`], for a body already serialized with its ETag (from a cache).
pub fn prepared_conditional_response(
    request_headers: &HeaderMap,
    body: Bytes,
    etag: &str,
    last_modified: DateTime<Utc>,
    cache: CacheControl,
) -> Response {
    let not_modified = match request_headers.get(header::IF_NONE_MATCH) {
        Some(if_none_match) => if_none_match.to_str().is_ok_and(|list| matches_weakly(list, etag)),
        None => request_headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            .is_some_and(|since| last_modified.timestamp() <= since.timestamp()),
    };
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = body.into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex is a valid header"));
    headers.insert(header::LAST_MODIFIED, HeaderValue::from_str(&http_date(last_modified)).expect("ascii"));
    cache.apply(headers);
    response
}

/// Checks `If-Match` against the current representation's ETag: absent or `*` passes, a list
/// passes only when it holds the current tag (strong comparison); anything else is 412.
pub fn check_if_match(request_headers: &HeaderMap, current: &Value) -> Result<(), Problem> {
    let Some(if_match) = request_headers.get(header::IF_MATCH) else {
        return Ok(());
    };
    let current = etag_of(&body_of(current));
    let list = if_match.to_str().map_err(|_| Problem::precondition_failed())?;
    let matched = list.trim() == "*" || entity_tags(list).any(|tag| !tag.starts_with("W/") && tag == current);
    if matched { Ok(()) } else { Err(Problem::precondition_failed()) }
}

/// `If-None-Match` uses weak comparison: `W/"x"` matches `"x"`.
fn matches_weakly(list: &str, etag: &str) -> bool {
    list.trim() == "*" || entity_tags(list).any(|tag| tag.trim_start_matches("W/") == etag)
}

fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|tag| !tag.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_tag_is_128_quoted_hex_bits_that_change_with_any_byte_of_the_body() {
        let body = br#"{"id":"0193b1e8-0000-7000-8000-000000000001","version":1}"#;
        let tag = etag_of(body);
        assert_eq!(tag, etag_of(body), "the same body, the same tag");
        assert!(tag.len() == 34 && tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        assert!(tag[1..33].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{tag}");
        let mut others = std::collections::HashSet::new();
        for index in 0..body.len() {
            let mut changed = body.to_vec();
            changed[index] ^= 1;
            assert!(others.insert(etag_of(&changed)), "two bodies share a tag");
        }
        assert!(!others.contains(&tag));
    }

    #[test]
    fn matching_if_none_match_yields_304_with_the_same_validators() {
        let value = json!({"id": 1});
        let now = Utc::now();
        let first = conditional_response(&HeaderMap::new(), &value, now, CacheControl::Private);
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let second = conditional_response(
            &headers(header::IF_NONE_MATCH, &format!("\"x\", W/{etag}")),
            &value,
            now,
            CacheControl::Private,
        );
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        for name in [header::ETAG, header::CACHE_CONTROL, header::VARY, header::LAST_MODIFIED] {
            assert_eq!(first.headers()[&name], second.headers()[&name]);
        }
    }

    #[test]
    fn if_match_uses_strong_comparison() {
        let value = json!({"id": 1});
        let etag = etag_of(&body_of(&value));
        assert!(check_if_match(&HeaderMap::new(), &value).is_ok());
        assert!(check_if_match(&headers(header::IF_MATCH, "*"), &value).is_ok());
        assert!(check_if_match(&headers(header::IF_MATCH, &format!("\"a\", {etag}")), &value).is_ok());
        assert!(check_if_match(&headers(header::IF_MATCH, &format!("W/{etag}")), &value).is_err());
        assert!(check_if_match(&headers(header::IF_MATCH, "\"stale\""), &value).is_err());
    }

    #[test]
    fn http_dates_round_trip_at_second_precision() {
        let time = DateTime::parse_from_rfc3339("1994-11-06T08:49:37Z").unwrap().to_utc();
        assert_eq!(http_date(time), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(time));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(time), "RFC 850");
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(time), "asctime");
    }
}
