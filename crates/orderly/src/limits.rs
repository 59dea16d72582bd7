//! Who is rate-limited by which quota. The mechanics (GCRA, Redis, headers, 429) are in
//! `orderly_kit::ratelimit`; this module names the tiers and classifies each API request:
//!
//! | policy          | applies to                                   | keyed by                 |
//! |-----------------|----------------------------------------------|--------------------------|
//! | `credentials`   | `/api/v1/auth/*` (token, register, logout)   | client IP                |
//! | `account_login` | password grants, in the token handler        | the account's email      |
//! | `api_key`       | calls with a valid API key                   | the key                  |
//! | `user`          | calls with a valid access token              | the user                 |
//! | `anonymous`     | calls without valid credentials              | client IP                |
//!
//! A request with a bad credential counts as anonymous, so guessing tokens spends the
//! guesser's own per-IP quota. The caller authenticated here is handed on to the handlers, so
//! the credential is checked once per request. Operations endpoints are never limited.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use orderly_kit::client_ip::{self, TrustedProxies};
use orderly_kit::ratelimit::{self, Decision, Limiter, Policy};

use crate::accounts::OAuthError;
use crate::accounts::auth::Authenticator;
use crate::accounts::tokens::hash_secret;
use crate::config::LimitsConfig;

const ANONYMOUS: &str = "anonymous";
const USER: &str = "user";
const API_KEY: &str = "api_key";
const CREDENTIALS: &str = "credentials";
const ACCOUNT_LOGIN: &str = "account_login";

const CREDENTIAL_PATHS: &str = "/api/v1/auth/";
const TOKEN_PATH: &str = "/api/v1/auth/token";

pub fn policies(config: &LimitsConfig) -> [Policy; 5] {
    [
        Policy::new(ANONYMOUS, config.rate_limit_anonymous),
        Policy::new(USER, config.rate_limit_user),
        Policy::new(API_KEY, config.rate_limit_api_key),
        Policy::new(CREDENTIALS, config.rate_limit_credentials),
        Policy::new(ACCOUNT_LOGIN, config.rate_limit_account_login),
    ]
}

/// The rate limiter, with what classifying a request takes. Cheap to clone: every field is
/// shared.
#[derive(Clone)]
pub struct RateLimits {
    /// Rate limits by tier, in Redis when it is configured.
    pub limiter: Arc<Limiter>,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Finds the caller's tier; the caller found is handed on, so handlers do not
    /// authenticate again.
    pub authenticator: Authenticator,
}

impl RateLimits {
    /// Counts one password attempt against an account. The email is hashed into the key, so
    /// shared state never holds addresses.
    pub async fn check_account_login(&self, email: &str) -> Decision {
        let key = hash_secret(&email.trim().to_lowercase());
        self.limiter.check(ACCOUNT_LOGIN, &key).await
    }
}

pub async fn middleware(State(limits): State<Arc<RateLimits>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/api/") {
        return next.run(request).await;
    }
    let (policy, key) = if path.starts_with(CREDENTIAL_PATHS) {
        (CREDENTIALS, client_key(&limits.trusted_proxies, &request))
    } else {
        match limits.authenticator.authenticate(request.headers()).await {
            Ok(Some(caller)) => {
                request.extensions_mut().insert(caller);
                match caller.api_key_id {
                    Some(key_id) => (API_KEY, key_id.to_string()),
                    None => (USER, caller.user_id.to_string()),
                }
            }
            Ok(None) | Err(_) => (ANONYMOUS, client_key(&limits.trusted_proxies, &request)),
        }
    };
    if request.uri().path() == TOKEN_PATH {
        // OAuth 2.0 clients read the token endpoint's errors by their `error` member.
        return ratelimit::enforce_with(&limits.limiter, policy, &key, request, next, OAuthError::rate_limited).await;
    }
    ratelimit::enforce(&limits.limiter, policy, &key, request, next).await
}

/// The client's address as the limit key, believing `X-Forwarded-For` only from trusted
/// proxies.
fn client_key(trusted_proxies: &TrustedProxies, request: &Request) -> String {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |connection| connection.0.ip());
    client_ip::limit_key(trusted_proxies.client_ip(peer, request.headers()))
}
