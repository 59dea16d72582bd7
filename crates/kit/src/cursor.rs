//! Opaque, tamper-evident keyset cursors.
//!
//! A cursor holds the sort key of the last row of a page plus a digest of the list's filters
//! and sort (its *scope*), signed with HMAC-SHA256. Decoding verifies the signature before
//! looking at the contents, and rejects a cursor presented with a different scope, so a client
//! can neither forge a position nor carry one into another query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::{Code, Problem};

/// Signs and verifies cursors with one key shared by every instance of a deployment.
#[derive(Clone)]
pub struct CursorCodec {
    key: hmac::Key,
    scopes: Arc<ScopeDigests>,
}

/// Digests of the scopes seen lately: a customer pages through the same few lists, and hashing
/// the scope was a quarter of encoding a cursor. Forgotten all at once when full.
#[derive(Default)]
struct ScopeDigests(Mutex<HashMap<Box<[u8]>, Arc<str>, foldhash::fast::RandomState>>);

impl ScopeDigests {
    const CAPACITY: usize = 4096;

    fn of(&self, scope: &impl Serialize) -> Arc<str> {
        let scope = serde_json::to_vec(scope).expect("cursor scopes always serialize");
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(digest) = known.get(scope.as_slice()) {
            return Arc::clone(digest);
        }
        if known.len() >= Self::CAPACITY {
            known.clear();
        }
        let digest: Arc<str> = URL_SAFE_NO_PAD.encode(&digest::digest(&digest::SHA256, &scope).as_ref()[..12]).into();
        known.insert(scope.into_boxed_slice(), Arc::clone(&digest));
        digest
    }
}

/// What a cursor signs: the scope's digest and the position.
#[derive(Serialize)]
struct Signed<'a, P: ?Sized> {
    s: &'a str,
    p: &'a P,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec(..)")
    }
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret), scopes: Arc::default() }
    }

    /// Encodes `position` for a list whose filters and sort are `scope`.
    pub fn encode(&self, scope: &impl Serialize, position: &impl Serialize) -> String {
        let digest = self.scopes.of(scope);
        let payload =
            serde_json::to_vec(&Signed { s: &digest, p: position }).expect("cursor payloads always serialize");
        let tag = hmac::sign(&self.key, &payload);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Verifies and decodes a cursor issued for the same `scope`.
    pub fn decode<P: DeserializeOwned>(&self, cursor: &str, scope: &impl Serialize) -> Result<P, Problem> {
        let (payload, tag) = cursor.split_once('.').ok_or_else(invalid_cursor)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid_cursor())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid_cursor())?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| invalid_cursor())?;
        let payload: Value = serde_json::from_slice(&payload).map_err(|_| invalid_cursor())?;
        if payload.get("s").and_then(Value::as_str) != Some(&*self.scopes.of(scope)) {
            return Err(Problem::bad_request(
                Code::InvalidCursor,
                "This cursor was issued for different filters or sort; start again without `cursor`.",
            ));
        }
        serde_json::from_value(payload.get("p").cloned().unwrap_or_default()).map_err(|_| invalid_cursor())
    }
}

fn invalid_cursor() -> Problem {
    Problem::bad_request(Code::InvalidCursor, "The cursor is malformed or was not issued by this service.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cursor_round_trips_within_its_scope() {
        let codec = CursorCodec::new(b"secret");
        let cursor = codec.encode(&json!({"sort": "price"}), &(42, "id-1"));
        let position: (i64, String) = codec.decode(&cursor, &json!({"sort": "price"})).unwrap();
        assert_eq!(position, (42, "id-1".to_owned()));
    }

    #[test]
    fn a_tampered_cursor_is_rejected() {
        let codec = CursorCodec::new(b"secret");
        let cursor = codec.encode(&"scope", &1);
        let (payload, tag) = cursor.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD
            .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap().replace("1}", "2}"));
        for bad in [format!("{forged_payload}.{tag}"), "garbage".into(), format!("{payload}.AAAA"), String::new()] {
            assert_eq!(codec.decode::<i64>(&bad, &"scope").unwrap_err().code(), "invalid_cursor", "{bad}");
        }
        let other_key = CursorCodec::new(b"other");
        assert!(other_key.decode::<i64>(&cursor, &"scope").is_err());
    }

    /// Cursors handed out before keep working: the signed payload is `{"s": <the first 12
    /// bytes of the scope's SHA-256>, "p": <position>}`, byte for byte.
    #[test]
    fn the_signed_payload_keeps_its_format() {
        let codec = CursorCodec::new(b"secret");
        let scope = json!({"sort": "-created_at", "user_id": "0190c6a5-1f2e-7c3b-8d4e-5f6a7b8c9d0e"});
        let position = ("2026-11-30T12:00:00.000001Z", "0190c6a5-1f2e-7c3b-8d4e-5f6a7b8c9d0f");
        for _ in 0..2 {
            let cursor = codec.encode(&scope, &position);
            let (payload, tag) = cursor.split_once('.').unwrap();
            let payload = URL_SAFE_NO_PAD.decode(payload).unwrap();
            let digest = digest::digest(&digest::SHA256, &serde_json::to_vec(&scope).unwrap());
            let expected = json!({"s": URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]), "p": position});
            assert_eq!(payload, serde_json::to_vec(&expected).unwrap());
            hmac::verify(&codec.key, &payload, &URL_SAFE_NO_PAD.decode(tag).unwrap()).unwrap();
        }
    }

    #[test]
    fn a_cursor_is_bound_to_its_scope() {
        let codec = CursorCodec::new(b"secret");
        let cursor = codec.encode(&json!({"active": true}), &1);
        assert!(codec.decode::<i64>(&cursor, &json!({"active": false})).is_err());
    }
}
