//! Signing secrets and the `Orderly-Signature` header.
//!
//! `Orderly-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, one `v1` per
//! secret that signs: the current one, and during a rotation the previous one too, so a
//! receiver that still holds the old secret verifies every delivery until it switches. The
//! whole secret string (`whsec_…`) is the HMAC key, so a receiver uses it as it was shown.

use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Random bytes in a secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A new signing secret: `whsec_` and 32 random bytes, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0_u8; SECRET_BYTES];
    SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    format!("whsec_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The header value signing `body` at `timestamp` with each of `secrets`.
pub fn header(timestamp: i64, body: &[u8], secrets: &[&str]) -> String {
    let mut value = format!("t={timestamp}");
    for secret in secrets {
        value.push_str(",v1=");
        value.push_str(&orderly_kit::hex::lower(sign(secret, timestamp, body).as_ref()));
    }
    value
}

fn sign(secret: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_prefixed_and_carries_32_random_bytes() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with("whsec_"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&a["whsec_".len()..]).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn the_header_holds_one_hmac_of_timestamp_dot_body_per_secret() {
        // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently with openssl.
        let header = header(1_700_000_000, b"{}", &["whsec_test", "whsec_old"]);
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts[1], "v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91");
        assert!(parts[2].starts_with("v1=") && parts[2] != parts[1]);
    }
}
