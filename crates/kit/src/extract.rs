//! Request extractors whose rejections are [`Problem`]s, so a bad body, query or path gets the
//! same problem format as every other error.

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::{StatusCode, header, request::Parts};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::problem::{Code, FieldError, Problem};

/// The media type of a request body, as far as the API cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    Other,
}

impl BodyKind {
    pub fn of(headers: &http::HeaderMap) -> Option<Self> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        Some(match essence.as_str() {
            "application/json" => Self::Json,
            media if media.starts_with("application/") && media.ends_with("+json") => Self::Json,
            "application/x-www-form-urlencoded" => Self::Form,
            _ => Self::Other,
        })
    }
}

pub fn unsupported_media_type(expected: &str) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::UnsupportedMediaType,
        format!("The request body must be sent as `{expected}`."),
    )
}

/// Reads the whole body, honouring the router's body limit (413 when exceeded).
pub async fn read_body(request: Request) -> Result<Bytes, Problem> {
    Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            payload_too_large()
        } else {
            Problem::bad_request(Code::InvalidBody, "The request body could not be read.")
        }
    })
}

pub fn payload_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::PayloadTooLarge,
        "The request body is larger than the server accepts.",
    )
}

/// Parses JSON text; syntax errors are 400 `invalid_json`.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(bytes)
        .map_err(|error| Problem::bad_request(Code::InvalidJson, format!("The body is not valid JSON: {error}.")))
}

/// Parses JSON text that must be an object; syntax errors are 400 `invalid_json`, a
/// non-object is 422.
pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, Problem> {
    match parse_json(bytes)? {
        Value::Object(object) => Ok(object),
        _ => Err(Problem::validation(vec![FieldError {
            field: "body".into(),
            code: "invalid_type".into(),
            message: "must be a JSON object".into(),
        }])),
    }
}

/// The pairs of a query string or form-encoded body, decoded.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// A resource id from the last path segment. Anything that is not an id names no resource: 404.
pub struct Id(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| Problem::not_found())?;
        parse_id(&raw).map(Self)
    }
}

/// Ids are UUIDs in their canonical hyphenated lower-case form; any other spelling is unknown.
pub fn parse_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::try_parse(raw).ok().filter(|id| id.hyphenated().to_string() == raw).ok_or_else(Problem::not_found)
}
