//! Per-request context: request id, trace id, path and the authenticated user, visible to every
//! piece of code that runs while the request is being handled.
//!
//! The [`middleware::envelope`](crate::middleware::envelope) layer creates the
//! context and runs the rest of the stack inside a task-local scope, so problem bodies and log
//! lines can carry the request id without threading it through every function.

use std::sync::{Arc, OnceLock};

use http::HeaderMap;

tokio::task_local! {
    static CURRENT: Arc<RequestContext>;
}

/// What is known about the request being served.
#[derive(Debug)]
pub struct RequestContext {
    /// The caller's `X-Request-ID` when well-formed, else a generated one. Echoed everywhere.
    pub request_id: String,
    /// W3C trace id: the request span's while spans are exported (which continues a valid
    /// incoming `traceparent`); else from that `traceparent`, or freshly generated.
    pub trace_id: String,
    /// Request path without the query, used as the problem `instance`.
    pub path: String,
    /// Set once by authentication so the access log can name the caller.
    pub user_id: OnceLock<String>,
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl RequestContext {
    pub fn from_headers(headers: &HeaderMap, path: &str) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_valid_request_id(id))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{:032x}", random_u128()));
        let trace_id = headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::trace::TraceParent::parse)
            .map(|parent| parent.trace_id_hex())
            .unwrap_or_else(|| format!("{:032x}", random_u128()));
        Self { request_id, trace_id, path: path.to_owned(), user_id: OnceLock::new() }
    }

    /// Runs `future` with this context as the current one.
    pub async fn scope<F: Future>(self: Arc<Self>, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The context of the request being served, if any.
    pub fn current() -> Option<Arc<RequestContext>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    /// Records the authenticated user for the access log.
    pub fn record_user(user_id: &str) {
        if let Some(context) = Self::current() {
            let _ = context.user_id.set(user_id.to_owned());
        }
    }
}

/// A W3C `traceparent` for an outgoing call: the current span's when spans are exported;
/// else, while a request is being handled, its trace id with a fresh parent id for the call.
pub fn outgoing_traceparent() -> Option<String> {
    if let Some(span) = crate::trace::outgoing() {
        return Some(span.to_string());
    }
    let context = RequestContext::current()?;
    let span_id = random_u128() as u64;
    Some(format!("00-{}-{span_id:016x}-01", context.trace_id))
}

/// 128 random bits for request and trace ids, from a per-thread generator seeded once from the
/// system: a syscall per request would cost more than the rest of the id handling.
pub(crate) fn random_u128() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).expect("the system random source works");
            u64::from_le_bytes(seed)
        });
    }
    // SplitMix64: fast, and every output of a well-seeded stream is distinct.
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    };
    (u128::from(next()) << 64) | u128::from(next())
}

/// `[A-Za-z0-9._-]{1,128}`: anything else is replaced, so ids are always safe to log and echo.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_outside_the_safe_alphabet_are_rejected() {
        assert!(is_valid_request_id("abc-DEF_1.2"));
        assert!(is_valid_request_id(&"a".repeat(128)));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id(&"a".repeat(129)));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id("new\nline"));
        assert!(!is_valid_request_id("ünï"));
    }
}
