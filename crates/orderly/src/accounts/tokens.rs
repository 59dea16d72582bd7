//! Credentials: Ed25519-signed JWT access tokens (with `kid` rotation and a published JWKS)
//! and opaque random secrets for refresh tokens and API keys.
//!
//! Opaque secrets are stored only as SHA-256 digests: they carry 256 bits of entropy, so a fast
//! digest is enough and lookups stay a single indexed read. Private key material never reaches
//! a log line: [`SigningKeys`] has a redacting `Debug`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{AuthConfig, ConfigError};

use super::domain::Role;

const ISSUER: &str = "orderly";
const KEY_FILE: &str = "jwt-ed25519.pem";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub role: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token (RFC 7519 §4.1.7), so two tokens issued in one second still differ.
    /// Absent from tokens issued before it existed.
    #[serde(default)]
    pub jti: Uuid,
}

/// The active signing key, every key accepted for verification, and the public JWKS.
pub struct SigningKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
    validation: Validation,
    access_ttl: Duration,
    /// Root of the secrets derived for other purposes (cursor signing, response sealing).
    derivation: hmac::Key,
    /// Recently verified tokens: a signature check costs far more than the rest of most
    /// requests. Keyed by the whole token; an entry is still checked for expiry on use.
    verified: moka::sync::Cache<String, AccessClaims, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// Loads the configured key; in embedded mode, loads or creates one in the data folder.
    pub fn load(config: &AuthConfig, embedded: bool) -> Result<Self, ConfigError> {
        let private_pem = match (&config.jwt_private_key, &config.jwt_private_key_file) {
            (Some(pem), _) => (pem.clone(), "ORDERLY_JWT_PRIVATE_KEY"),
            (None, Some(path)) => (
                std::fs::read_to_string(path).map_err(|error| {
                    ConfigError::new("ORDERLY_JWT_PRIVATE_KEY_FILE", format!("cannot read {}: {error}", path.display()))
                })?,
                "ORDERLY_JWT_PRIVATE_KEY_FILE",
            ),
            (None, None) if embedded => (load_or_create_embedded_key(&config.data_dir)?, "ORDERLY_DATA_DIR"),
            (None, None) => {
                return Err(ConfigError::new(
                    "ORDERLY_JWT_PRIVATE_KEY",
                    "is required with PostgreSQL so every instance signs with the same key",
                ));
            }
        };
        let (pem, setting) = private_pem;
        let pkcs8 = pem::parse(pem.trim())
            .ok()
            .filter(|p| p.tag() == "PRIVATE KEY")
            .map(|p| p.into_contents())
            .ok_or_else(|| ConfigError::new(setting, "is not a PKCS#8 PEM private key"))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| ConfigError::new(setting, "is not an Ed25519 private key"))?;
        let mut public_keys = vec![pair.public_key().as_ref().to_vec()];
        if let Some(previous) = &config.jwt_previous_public_keys {
            public_keys.extend(parse_public_keys(previous)?);
        }
        Ok(Self::from_parts(&pkcs8, &public_keys, config.access_token_ttl))
    }

    fn from_parts(pkcs8: &[u8], public_keys: &[Vec<u8>], access_ttl: Duration) -> Self {
        let mut decoding = HashMap::new();
        let mut jwks = Vec::new();
        for key in public_keys {
            let x = URL_SAFE_NO_PAD.encode(key);
            let kid = thumbprint(&x);
            decoding.insert(kid.clone(), DecodingKey::from_ed_components(&x).expect("32-byte Ed25519 keys are valid"));
            jwks.push(
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
            );
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 30;
        Self {
            kid: thumbprint(&URL_SAFE_NO_PAD.encode(&public_keys[0])),
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding,
            jwks: serde_json::json!({ "keys": jwks }),
            validation,
            access_ttl,
            derivation: hmac::Key::new(hmac::HMAC_SHA256, pkcs8),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// Issues an access token; returns it with its lifetime in seconds.
    pub fn issue_access_token(&self, user_id: Uuid, role: Role) -> (String, u64) {
        let now = chrono::Utc::now().timestamp();
        let ttl = self.access_ttl.as_secs();
        let claims = AccessClaims {
            sub: user_id,
            role: role.as_str().to_owned(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).expect("Ed25519 signing does not fail");
        (token, ttl)
    }

    /// Verifies signature, issuer and expiry.
    pub fn verify_access_token(&self, token: &str) -> Option<AccessClaims> {
        if let Some(claims) = self.verified.get(token) {
            let leeway = i64::try_from(self.validation.leeway).unwrap_or(0);
            return (claims.exp + leeway > chrono::Utc::now().timestamp()).then_some(claims);
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = self.decoding.get(header.kid.as_deref()?)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation).ok()?.claims;
        self.verified.insert(token.to_owned(), claims.clone());
        Some(claims)
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// A 256-bit secret for `purpose`, derived from the signing key (HMAC-SHA256), so every
    /// instance sharing the key agrees on it without another secret to distribute.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let mut secret = [0u8; 32];
        secret.copy_from_slice(hmac::sign(&self.derivation, purpose.as_bytes()).as_ref());
        secret
    }
}

/// RFC 7638 JWK thumbprint of an Ed25519 key.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

fn parse_public_keys(pems: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
    let invalid =
        || ConfigError::new("ORDERLY_JWT_PREVIOUS_PUBLIC_KEYS", "must be Ed25519 public keys in SPKI PEM form");
    let blocks = pem::parse_many(pems).map_err(|_| invalid())?;
    blocks
        .into_iter()
        .map(|block| {
            let der = block.contents();
            (block.tag() == "PUBLIC KEY" && der.len() == 44 && der[..12] == ED25519_SPKI_PREFIX)
                .then(|| der[12..].to_vec())
                .ok_or_else(invalid)
        })
        .collect()
}

fn load_or_create_embedded_key(data_dir: &Path) -> Result<String, ConfigError> {
    let path = data_dir.join(KEY_FILE);
    let unusable =
        |error: std::io::Error| ConfigError::new("ORDERLY_DATA_DIR", format!("cannot use {}: {error}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(pem) => return Ok(pem),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(unusable(error)),
        Err(_) => {}
    }
    std::fs::create_dir_all(data_dir).map_err(unusable)?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("the system random source works");
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    write_private_file(&path, &pem).map_err(unusable)?;
    tracing::info!(path = %path.display(), "generated a new token signing key");
    Ok(pem)
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// A fresh opaque secret: a short type prefix and 256 random bits, base64url.
pub fn generate_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).expect("the system random source works");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    orderly_kit::hex::lower(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_keys() -> SigningKeys {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let public = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        SigningKeys::from_parts(pkcs8.as_ref(), &[public], Duration::from_secs(60))
    }

    #[test]
    fn an_issued_token_verifies_and_a_tampered_one_does_not() {
        let keys = new_keys();
        let user = Uuid::now_v7();
        let (token, _) = keys.issue_access_token(user, Role::Admin);
        let claims = keys.verify_access_token(&token).unwrap();
        assert_eq!((claims.sub, claims.role.as_str()), (user, "admin"));

        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 5, 'x');
        assert!(keys.verify_access_token(&tampered).is_none());
        assert!(new_keys().verify_access_token(&token).is_none(), "another key must not verify it");
    }

    #[test]
    fn tokens_issued_together_differ() {
        let keys = new_keys();
        let user = Uuid::now_v7();
        let (first, _) = keys.issue_access_token(user, Role::Customer);
        let (second, _) = keys.issue_access_token(user, Role::Customer);
        assert_ne!(first, second);
        assert_ne!(keys.verify_access_token(&first).unwrap().jti, keys.verify_access_token(&second).unwrap().jti);
    }

    #[test]
    fn the_jwks_publishes_the_signing_key_under_its_kid() {
        let keys = new_keys();
        let (token, _) = keys.issue_access_token(Uuid::now_v7(), Role::Customer);
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert_eq!(keys.jwks()["keys"][0]["kid"], kid.as_str());
        assert_eq!(keys.jwks()["keys"][0]["crv"], "Ed25519");
    }

    #[test]
    fn secrets_are_unique_and_hashes_are_stable() {
        let (a, b) = (generate_secret("sk_"), generate_secret("sk_"));
        assert_ne!(a, b);
        assert!(a.starts_with("sk_") && a.len() == 46);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_eq!(hash_secret(&a).len(), 64);
    }
}
