//! `Idempotency-Key` on POST requests (IETF draft `httpapi-idempotency-key-header`, with
//! Stripe's semantics).
//!
//! A key is scoped to the caller, the method and the path. The first request with a key runs;
//! its completed response (status, `Location`, `Content-Type`, body) is kept for the configured
//! time and replayed byte for byte, with `Idempotent-Replayed: true`, to every later request
//! with the same key and the same body. The same key with another body is 422
//! `idempotency_key_reused`; while the first request still runs, 409
//! `idempotency_request_in_progress` with `Retry-After`. Responses to requests rejected before
//! running (400, 401, 403, 405, 412, 413, 415, 422, 429), 5xx results and any response with
//! `Retry-After` are not kept, so the client may fix the request or retry it.
//!
//! Records live behind [`IdempotencyStore`], shared by every instance. Stored responses are
//! sealed (AES-256-GCM): they may hold secrets shown once, such as a new API key.
//!
//! A key is kept one of three ways ([`Keeping`]). `Separately`: the record is claimed before
//! the handler runs and completed after it (three commits with the handler's own). `WithTheWrite`,
//! for handlers whose whole effect is one database transaction: the handler receives a
//! [`KeyedWrite`], claims the key as the first statement of its transaction and stores the
//! response as the last, so the key, the effect and the kept response commit together. A second
//! request with the same key then waits on the first's transaction (the record's row is
//! locked) and replays its outcome, or runs if it rolled back, instead of getting 409.
//! `InPhases`, for handlers whose effect is two transactions around a call elsewhere (a
//! charge written ahead, then recorded): the handler claims the key in its first transaction
//! and stores the response in its last; a request with the same key meanwhile gets 409. An
//! answer the handler could not store there comes back marked [`Claimed`], and the layer
//! keeps it under the claim, or releases the key when the answer is not kept.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode, header};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::problem::{Code, Problem};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A validated key: 1–255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, Problem> {
        if (1..=255).contains(&raw.len()) && raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            Ok(Self(String::from_utf8_lossy(raw).into_owned()))
        } else {
            Err(Problem::bad_request(
                Code::InvalidIdempotencyKey,
                "`Idempotency-Key` must be 1 to 255 printable ASCII characters.",
            ))
        }
    }
}

/// An idempotency record as stored.
#[derive(Debug, Clone)]
pub struct Record {
    /// Digest of the method, path and body of the request that created the record.
    pub fingerprint: String,
    /// The sealed response, once the first request completed.
    pub response: Option<Vec<u8>>,
}

/// Where records live. Implementations must make `claim` atomic across every instance.
pub trait IdempotencyStore: Clone + Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    /// Creates an in-progress record for `id`, or replaces one that has expired or whose lock
    /// lapsed (its request died). Returns `None` when this caller now owns the record, else
    /// the record that stands.
    fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        locked_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Record>, Self::Error>> + Send;

    /// Stores the sealed response of the request that owns `id`. The record keeps the expiry
    /// its claim set (the same request's), so completing changes nothing a store indexes.
    fn complete(&self, id: &str, response: Vec<u8>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Forgets `id`, so the key may be used again.
    fn release(&self, id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Extends the lock of the unfinished record `id` to `locked_until`: its request is alive.
    fn renew(&self, id: &str, locked_until: DateTime<Utc>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// How long records live and what a request may do.
#[derive(Clone)]
pub struct Settings {
    /// How long a completed response is kept.
    pub ttl: Duration,
    /// How long an in-progress record blocks its key without being renewed, after which its
    /// request is presumed dead (its instance crashed). The request renews it every third of
    /// that while it runs, so a retry after a crash waits at most this long.
    pub lock_ttl: Duration,
    /// Largest body buffered for fingerprinting (the request body limit).
    pub max_body_bytes: usize,
    /// Seals stored responses.
    pub sealer: Sealer,
}

/// The response parts that are replayed.
#[derive(Debug, PartialEq, Eq)]
struct StoredResponse<'a> {
    status: u16,
    location: Option<&'a str>,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

/// Sealed records start with this byte, then the status (2 bytes, big-endian), `Location` and
/// `Content-Type` (each a 4-byte big-endian length, `u32::MAX` when absent, and the text), then
/// the body. Records sealed before it existed are JSON, so they start with `{`.
const RECORD_FORMAT: u8 = 1;
const ABSENT: u32 = u32::MAX;

impl<'a> StoredResponse<'a> {
    fn encode(&self) -> Vec<u8> {
        let texts = self.location.map_or(0, str::len) + self.content_type.map_or(0, str::len);
        let mut plain = Vec::with_capacity(11 + texts + self.body.len());
        plain.push(RECORD_FORMAT);
        plain.extend_from_slice(&self.status.to_be_bytes());
        for text in [self.location, self.content_type] {
            match text.map(|text| (text, u32::try_from(text.len()))) {
                Some((text, Ok(length))) if length != ABSENT => {
                    plain.extend_from_slice(&length.to_be_bytes());
                    plain.extend_from_slice(text.as_bytes());
                }
                _ => plain.extend_from_slice(&ABSENT.to_be_bytes()),
            }
        }
        plain.extend_from_slice(self.body);
        plain
    }

    fn decode(plain: &'a [u8]) -> Option<Self> {
        let (&format, rest) = plain.split_first()?;
        if format != RECORD_FORMAT {
            return None;
        }
        let (status, mut rest) = rest.split_first_chunk::<2>()?;
        let mut text = || -> Option<Option<&'a str>> {
            let (length, after) = rest.split_first_chunk::<4>()?;
            let length = u32::from_be_bytes(*length);
            if length == ABSENT {
                rest = after;
                return Some(None);
            }
            let (text, after) = after.split_at_checked(usize::try_from(length).ok()?)?;
            rest = after;
            Some(Some(std::str::from_utf8(text).ok()?))
        };
        let (location, content_type) = (text()?, text()?);
        Some(Self { status: u16::from_be_bytes(*status), location, content_type, body: rest })
    }
}

/// A response as records sealed before [`RECORD_FORMAT`] hold it (read while they live).
#[derive(Deserialize)]
struct JsonStoredResponse {
    status: u16,
    location: Option<String>,
    content_type: Option<String>,
    #[serde(with = "base64_bytes")]
    body: Vec<u8>,
}

impl JsonStoredResponse {
    fn as_stored(&self) -> StoredResponse<'_> {
        StoredResponse {
            status: self.status,
            location: self.location.as_deref(),
            content_type: self.content_type.as_deref(),
            body: &self.body,
        }
    }
}

/// How a route keeps its keys (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeping {
    Separately,
    WithTheWrite,
    InPhases,
}

/// Handed to a handler whose route keeps keys [`Keeping::WithTheWrite`]: what its transaction
/// claims and stores.
#[derive(Clone)]
pub struct KeyedWrite {
    pub id: String,
    pub fingerprint: String,
    pub locked_until: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    sealer: Sealer,
}

impl KeyedWrite {
    /// The sealed record of a response with this `status`, `Location` and JSON `body`, to be
    /// stored in the same transaction as the write.
    pub fn seal(&self, status: StatusCode, location: Option<&str>, body: &[u8]) -> Vec<u8> {
        let stored = StoredResponse { status: status.as_u16(), location, content_type: Some("application/json"), body };
        self.sealer.seal(&stored.encode())
    }

    /// The answer to a request whose claim found `standing`, a live record of another
    /// request with the same key: its response replayed, 422 for another body, or 409 while
    /// it runs.
    pub fn answer(&self, standing: &Record) -> Response {
        let mut response = judge(&self.sealer, standing, &self.fingerprint);
        response.extensions_mut().insert(Kept);
        response
    }
}

/// Marks a response whose key the handler settled itself ([`Keeping::WithTheWrite`],
/// [`Keeping::InPhases`]).
#[derive(Debug, Clone, Copy)]
pub struct Kept;

/// Marks a response whose handler holds the key's claim, committed by an earlier
/// transaction, without having stored an outcome under it ([`Keeping::InPhases`]): the layer
/// keeps the response under the claim, or releases the key when the response is not kept.
#[derive(Debug, Clone, Copy)]
pub struct Claimed;

/// Handed to the handler of a request that holds its key. `id` is the same for every retry
/// with the same key by the same caller on the same method and path, so it can serve as the
/// idempotency key of calls the handler makes downstream.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
}

/// Runs `request` under its `Idempotency-Key`, if it has one. `scope` identifies the caller
/// (a user id, or a shared anonymous scope); `required` makes a missing key a 400.
pub async fn run<S: IdempotencyStore>(
    store: &S,
    settings: &Settings,
    scope: &str,
    required: bool,
    keeping: Keeping,
    request: Request,
    next: Next,
) -> Response {
    let Some(raw_key) = request.headers().get(HEADER) else {
        if required {
            return Problem::bad_request(
                Code::IdempotencyKeyRequired,
                "This endpoint requires an `Idempotency-Key` header.",
            )
            .into_response();
        }
        return next.run(request).await;
    };
    let key = match IdempotencyKey::parse(raw_key.as_bytes()) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };

    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, settings.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return crate::extract::payload_too_large().into_response(),
    };
    let method_and_path = format!("{} {}", parts.method, parts.uri.path());
    let id = hex_digest(&[scope.as_bytes(), b"\n", method_and_path.as_bytes(), b"\n", key.0.as_bytes()]);
    let fingerprint = hex_digest(&[method_and_path.as_bytes(), b"\n", &body]);

    let now = Utc::now();
    let lock_ttl = chrono::TimeDelta::from_std(settings.lock_ttl).unwrap_or(chrono::TimeDelta::seconds(60));
    let locked_until = now + lock_ttl;
    let expires_at = now + chrono::TimeDelta::from_std(settings.ttl).unwrap_or(chrono::TimeDelta::days(1));
    if keeping != Keeping::Separately {
        let keyed = KeyedWrite { id, fingerprint, locked_until, expires_at, sealer: settings.sealer.clone() };
        return run_with_the_write(store, keyed, parts, body, next).await;
    }
    match store.claim(&id, &fingerprint, locked_until, expires_at).await {
        Err(error) => return store_unavailable(&error),
        Ok(Some(record)) => return judge(&settings.sealer, &record, &fingerprint),
        Ok(None) => {}
    }

    // From here this request owns the key. If it is dropped before finishing (client gone,
    // deadline, panic), the guard releases the key so a retry is not blocked until the lock
    // lapses.
    let mut guard = ReleaseOnDrop { id: Some(id.clone()), store: store.clone() };
    let mut parts = parts;
    parts.extensions.insert(Claim { id: id.clone() });
    let work = next.run(Request::from_parts(parts, Body::from(body)));
    let response = crate::lease::renewing(work, settings.lock_ttl / 3, || async {
        let locked_until = Utc::now() + lock_ttl;
        if let Err(error) = store.renew(&id, locked_until).await {
            tracing::warn!(error = %error, "could not renew an idempotency lock; a retry may run beside this request");
        }
    })
    .await;
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(_) => {
            tracing::error!("a response body could not be buffered for idempotency");
            return Problem::internal().into_response();
        }
    };
    // Settle the key before answering, so a retry that follows this response sees it settled.
    let settled = if is_kept(parts.status, &parts.headers) {
        store.complete(&id, seal_parts(&settings.sealer, &parts, &body)).await
    } else {
        store.release(&id).await
    };
    match settled {
        Ok(()) => guard.disarm(),
        Err(error) => tracing::error!(error = %error, "could not settle an idempotency key; the guard releases it"),
    }
    Response::from_parts(parts, Body::from(body))
}

/// [`Keeping::WithTheWrite`] and [`Keeping::InPhases`]: the handler claims and keeps the key
/// in its transactions. An outcome it could not keep there is kept here: under the claim it
/// holds ([`Claimed`]), or, when it holds none (a refusal, after its transaction rolled
/// back), under a claim made now, unless another request's outcome stands by then.
async fn run_with_the_write<S: IdempotencyStore>(
    store: &S,
    keyed: KeyedWrite,
    mut parts: http::request::Parts,
    body: Bytes,
    next: Next,
) -> Response {
    parts.extensions.insert(keyed.clone());
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if response.extensions().get::<Kept>().is_some() {
        return response;
    }
    let claimed = response.extensions().get::<Claimed>().is_some();
    if !is_kept(response.status(), response.headers()) {
        if claimed && let Err(error) = store.release(&keyed.id).await {
            tracing::warn!(error = %error, "could not release an idempotency key; it frees itself when its lock lapses");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        tracing::error!("a response body could not be buffered for idempotency");
        return Problem::internal().into_response();
    };
    let sealed = seal_parts(&keyed.sealer, &parts, &body);
    if claimed {
        if let Err(error) = store.complete(&keyed.id, sealed).await {
            tracing::error!(error = %error, "could not keep an answer under its idempotency key");
            let _ = store.release(&keyed.id).await;
        }
        return Response::from_parts(parts, Body::from(body));
    }
    match store.claim(&keyed.id, &keyed.fingerprint, keyed.locked_until, keyed.expires_at).await {
        Ok(None) => {
            if let Err(error) = store.complete(&keyed.id, sealed).await {
                tracing::error!(error = %error, "could not keep a refusal under its idempotency key");
                let _ = store.release(&keyed.id).await;
            }
        }
        // Another request with this key ran meanwhile; its outcome stands.
        Ok(Some(_)) => {}
        Err(error) => tracing::warn!(error = %error, "could not keep a refusal under its idempotency key"),
    }
    Response::from_parts(parts, Body::from(body))
}

fn seal_parts(sealer: &Sealer, parts: &http::response::Parts, body: &[u8]) -> Vec<u8> {
    let (location, content_type) =
        (header_string(&parts.headers, header::LOCATION), header_string(&parts.headers, header::CONTENT_TYPE));
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        location: location.as_deref(),
        content_type: content_type.as_deref(),
        body,
    };
    sealer.seal(&stored.encode())
}

fn store_unavailable(error: &impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "idempotency store unavailable");
    Problem::unavailable(
        Code::IdempotencyUnavailable,
        "Idempotency keys cannot be checked right now; retry shortly.",
        1,
    )
    .into_response()
}

/// The answer to a request whose key is held by the live record `standing`.
fn judge(sealer: &Sealer, standing: &Record, fingerprint: &str) -> Response {
    match standing {
        Record { fingerprint: theirs, .. } if theirs != fingerprint => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::IdempotencyKeyReused,
            "This `Idempotency-Key` was already used with a different request body.",
        )
        .into_response(),
        Record { response: Some(sealed), .. } => replay(sealer, sealed),
        Record { response: None, .. } => Problem::conflict(
            Code::IdempotencyRequestInProgress,
            "A request with this `Idempotency-Key` is still being processed; retry shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response(),
    }
}

/// Whether a response is the outcome of running the request (kept) or a rejection before or
/// instead of running it (not kept, so the client may retry). A response with `Retry-After`
/// asks for the same request again later (a 409 while other work holds the resource, say), so
/// it is not an outcome either.
fn is_kept(status: StatusCode, headers: &http::HeaderMap) -> bool {
    !(status.is_server_error()
        || matches!(status.as_u16(), 400 | 401 | 403 | 405 | 408 | 412 | 413 | 415 | 422 | 429)
        || headers.contains_key(header::RETRY_AFTER))
}

fn replay(sealer: &Sealer, sealed: &[u8]) -> Response {
    let Some(plain) = sealer.open(sealed) else {
        tracing::error!("a stored idempotent response could not be opened");
        return Problem::internal().into_response();
    };
    let json: Option<JsonStoredResponse>;
    let stored = match StoredResponse::decode(&plain) {
        Some(stored) => Some(stored),
        None => {
            json = serde_json::from_slice(&plain).ok();
            json.as_ref().map(JsonStoredResponse::as_stored)
        }
    };
    let Some(stored) = stored else {
        tracing::error!("a stored idempotent response could not be read");
        return Problem::internal().into_response();
    };
    let mut response = Response::new(Body::from(Bytes::copy_from_slice(stored.body)));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in [(header::LOCATION, stored.location), (header::CONTENT_TYPE, stored.content_type)] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    metrics::counter!("idempotency_replays_total").increment(1);
    response
}

fn header_string(headers: &http::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn hex_digest(parts: &[&[u8]]) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(part);
    }
    crate::hex::lower(context.finish().as_ref())
}

/// Releases the key it holds when dropped unless disarmed.
struct ReleaseOnDrop<S: IdempotencyStore> {
    id: Option<String>,
    store: S,
}

impl<S: IdempotencyStore> ReleaseOnDrop<S> {
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl<S: IdempotencyStore> Drop for ReleaseOnDrop<S> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.release(&id).await {
                tracing::warn!(error = %error, "could not release an idempotency key; it frees itself when its lock lapses");
            }
        });
    }
}

/// AES-256-GCM sealing of stored responses.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid for AES-256-GCM");
        Self { key: std::sync::Arc::new(LessSafeKey::new(key)) }
    }

    /// `plain` encrypted and authenticated: the nonce, the cipher text, the tag.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system random source works");
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed[NONCE_LEN..])
            .expect("sealing in memory does not fail");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = ciphertext.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::empty(), &mut buffer).ok()?;
        Some(plain.to_vec())
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_255_printable_ascii_characters() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse(b"order 42 ~!").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        for bad in [&b""[..], &[b'k'; 256], b"tab\there", b"new\nline", "ünï".as_bytes(), b"\x7f"] {
            assert_eq!(IdempotencyKey::parse(bad).unwrap_err().code(), "invalid_idempotency_key");
        }
    }

    #[test]
    fn a_stored_response_reads_back_as_it_was_kept() {
        for location in [None, Some(""), Some("/api/v1/orders/0193b1e8-0000-7000-8000-000000000001")] {
            for content_type in [None, Some("application/problem+json")] {
                for body in [&b""[..], b"{\"id\":1}", &[0, 255, 7]] {
                    let stored = StoredResponse { status: 201, location, content_type, body };
                    let plain = stored.encode();
                    assert_eq!(StoredResponse::decode(&plain), Some(stored));
                    for cut in 0..plain.len().min(11) {
                        assert_eq!(StoredResponse::decode(&plain[..cut]), None, "cut at {cut}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn responses_kept_as_json_by_earlier_releases_still_replay() {
        let sealer = Sealer::new(&[7; 32]);
        let json =
            br#"{"status":201,"location":"/api/v1/orders/1","content_type":"application/json","body":"eyJpZCI6MX0="}"#;
        let replayed = replay(&sealer, &sealer.seal(json));
        assert_eq!(replayed.status(), StatusCode::CREATED);
        assert_eq!(replayed.headers()[header::LOCATION], "/api/v1/orders/1");
        assert_eq!(replayed.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(replayed.headers()[REPLAYED_HEADER], "true");
        let body = http_body_util::BodyExt::collect(replayed.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"id":1}"#);

        let kept = StoredResponse { status: 201, location: Some("/api/v1/orders/1"), content_type: None, body: b"{}" };
        let replayed = replay(&sealer, &sealer.seal(&kept.encode()));
        assert_eq!((replayed.status(), replayed.headers().get(header::CONTENT_TYPE)), (StatusCode::CREATED, None));
    }

    #[test]
    fn sealed_responses_open_only_with_their_key_and_unaltered() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal(b"secret response");
        assert_eq!(sealer.open(&sealed).as_deref(), Some(&b"secret response"[..]));
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "the plain text is not stored");
        assert!(Sealer::new(&[8; 32]).open(&sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&tampered).is_none());
    }

    #[test]
    fn rejections_server_errors_and_answers_to_retry_later_are_not_kept() {
        let none = http::HeaderMap::new();
        for status in [400, 401, 403, 412, 413, 415, 422, 429, 500, 503] {
            assert!(!is_kept(StatusCode::from_u16(status).unwrap(), &none), "{status}");
        }
        for status in [200, 201, 202, 204, 402, 404, 409] {
            assert!(is_kept(StatusCode::from_u16(status).unwrap(), &none), "{status}");
        }
        let mut retry_later = http::HeaderMap::new();
        retry_later.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        assert!(!is_kept(StatusCode::CONFLICT, &retry_later));
    }
}
