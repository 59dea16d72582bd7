//! Rate-limit decisions and how they are told to clients.
//!
//! A [`Policy`] is a named quota: `limit` requests per `window`, enforced as GCRA (a token
//! bucket that refills one request every `window / limit`, holding at most `limit`). A
//! [`Decision`] carries the IETF rate-limit headers every limited response gets:
//! `RateLimit-Policy: "<name>";q=<limit>;w=<window s>` and
//! `RateLimit: "<name>";r=<remaining>;t=<seconds>`, where `t` is the time until the bucket is
//! full again, or, once a request is refused, until the next one is allowed. A refusal is
//! 429 `rate_limited` with `Retry-After` equal to `t`, so a client that waits as told is
//! let through.
//!
//! A [`Limiter`] decides in process memory (quotas per instance) or, given a
//! [`SharedRedis`], with one atomic Redis script per decision (quotas global across
//! instances, on Redis's clock). When Redis cannot answer, it decides in memory instead and
//! counts the decision in `ratelimit_local_fallbacks_total`: a Redis outage loosens quotas to
//! per instance for its duration rather than failing or refusing requests.
//! [`enforce`] applies one decision to a request.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::problem::Problem;
use crate::redis::SharedRedis;

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A named quota: `limit` requests per `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: &'static str,
    pub limit: u32,
    pub window: Duration,
}

/// A quota as configured: `<limit>/<seconds>s`, e.g. `100/60s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub window: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{text}` is not a rate like `100/60s`");
        let (limit, window) = text.split_once('/').ok_or_else(invalid)?;
        let limit: u32 = limit.trim().parse().map_err(|_| invalid())?;
        let seconds: u64 = window.trim().strip_suffix('s').ok_or_else(invalid)?.parse().map_err(|_| invalid())?;
        if limit == 0 || seconds == 0 || seconds > 86_400 {
            return Err(format!("`{text}`: the limit must be at least 1 and the window 1 s to 1 day"));
        }
        if u64::from(limit) > seconds * 1_000_000 {
            return Err(format!("`{text}`: at most one request per microsecond"));
        }
        Ok(Self { limit, window: Duration::from_secs(seconds) })
    }
}

impl Policy {
    pub fn new(name: &'static str, rate: Rate) -> Self {
        Self { name, limit: rate.limit, window: rate.window }
    }

    /// Time for one request's worth of quota to come back.
    fn emission_interval(&self) -> Duration {
        self.window / self.limit
    }
}

/// What a policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub policy: Policy,
    pub allowed: bool,
    pub remaining: u32,
    /// The `t` of the `RateLimit` header; see the module documentation.
    pub reset: Duration,
}

impl Decision {
    /// Adds this policy to a response's `RateLimit-Policy` and `RateLimit` lists (a request
    /// under two policies carries both).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let policy = format!("\"{}\";q={};w={}", self.policy.name, self.policy.limit, self.policy.window.as_secs());
        let state = format!("\"{}\";r={};t={}", self.policy.name, self.remaining, self.reset_secs());
        headers.append(RATELIMIT_POLICY, HeaderValue::from_str(&policy).expect("policy names are plain tokens"));
        headers.append(RATELIMIT, HeaderValue::from_str(&state).expect("numbers are valid header text"));
    }

    /// `t` in whole seconds, rounded up so that waiting `t` is always enough.
    pub fn reset_secs(&self) -> u64 {
        self.reset.as_secs() + u64::from(self.reset.subsec_nanos() > 0)
    }

    /// The 429 for a refused request, with `Retry-After` equal to `t` and both headers.
    pub fn rejection(&self) -> Response {
        let retry_after = self.reset_secs().max(1);
        let mut response = Problem::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many requests; retry in {retry_after} s."),
        )
        .with_header(http::header::RETRY_AFTER, retry_after.into())
        .into_response();
        let mut decision = self.clone();
        decision.reset = Duration::from_secs(retry_after);
        decision.write_headers(response.headers_mut());
        response
    }
}

/// Counts one request against `key` under `policy`, and answers 429 when over quota; otherwise
/// runs the request and adds the rate-limit headers to its response.
pub async fn enforce(limiter: &Limiter, policy: &str, key: &str, request: Request, next: Next) -> Response {
    let decision = limiter.check(policy, key).await;
    if !decision.allowed {
        return decision.rejection();
    }
    let mut response = next.run(request).await;
    decision.write_headers(response.headers_mut());
    response
}

/// Named quotas, decided in Redis when it is configured and answers, in memory otherwise.
pub struct Limiter {
    local: LocalLimiter,
    shared: Option<Arc<SharedRedis>>,
}

impl Limiter {
    pub fn new(policies: impl IntoIterator<Item = Policy>, shared: Option<Arc<SharedRedis>>) -> Self {
        Self { local: LocalLimiter::new(policies), shared }
    }

    /// Counts one request against `key` under the named policy.
    ///
    /// # Panics
    /// If no policy of that name was given to [`Limiter::new`].
    pub async fn check(&self, policy: &str, key: &str) -> Decision {
        let decision = match &self.shared {
            Some(redis) => match check_in_redis(redis, self.local.policy(policy), key).await {
                Ok(decision) => decision,
                Err(_) => {
                    metrics::counter!("ratelimit_local_fallbacks_total").increment(1);
                    self.local.check(policy, key)
                }
            },
            None => self.local.check(policy, key),
        };
        if !decision.allowed {
            metrics::counter!("ratelimit_rejections_total", "policy" => decision.policy.name).increment(1);
        }
        decision
    }

    /// Drops in-memory buckets that are full again; call now and then so memory follows
    /// active clients.
    pub fn forget_idle(&self) {
        self.local.forget_idle();
    }
}

/// GCRA over one key holding the bucket's theoretical arrival time, in microseconds of Redis's
/// own clock (so instances with skewed clocks still agree). Returns `{allowed, remaining,
/// reset µs}`; the key expires once the bucket would be full again.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - window
if allow_at > now then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), next_tat - now}
",
    )
});

async fn check_in_redis(
    redis: &SharedRedis,
    policy: &Policy,
    key: &str,
) -> Result<Decision, crate::redis::Unavailable> {
    let bucket = redis.key(format_args!("ratelimit:{}:{key}", policy.name));
    let interval = u64::try_from(policy.emission_interval().as_micros()).unwrap_or(u64::MAX).max(1);
    let (allowed, remaining, reset): (u8, u32, u64) = redis
        .call("ratelimit", async |connection| {
            GCRA.key(&bucket).arg(interval).arg(policy.limit).invoke_async(connection).await
        })
        .await?;
    Ok(Decision {
        policy: policy.clone(),
        allowed: allowed == 1,
        remaining: remaining.min(policy.limit),
        reset: Duration::from_micros(reset),
    })
}

type KeyedLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Per-instance limiter: one GCRA bucket per policy and key, in memory.
struct LocalLimiter {
    clock: DefaultClock,
    limiters: HashMap<&'static str, (Policy, KeyedLimiter)>,
}

impl LocalLimiter {
    fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let limiters = policies
            .into_iter()
            .map(|policy| {
                let burst = NonZeroU32::new(policy.limit).expect("a policy allows at least one request");
                let quota = Quota::with_period(policy.emission_interval())
                    .expect("the emission interval is not zero")
                    .allow_burst(burst);
                (policy.name, (policy, RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()))
            })
            .collect();
        Self { clock: DefaultClock::default(), limiters }
    }

    fn policy(&self, name: &str) -> &Policy {
        &self.limiters.get(name).expect("the policy is configured").0
    }

    fn check(&self, policy: &str, key: &str) -> Decision {
        let (policy, limiter) = self.limiters.get(policy).expect("the policy is configured");
        match limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Each used request comes back after one emission interval.
                let reset = policy.emission_interval() * (policy.limit - remaining.min(policy.limit));
                Decision { policy: policy.clone(), allowed: true, remaining, reset }
            }
            Err(not_until) => Decision {
                policy: policy.clone(),
                allowed: false,
                remaining: 0,
                reset: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    fn forget_idle(&self) {
        for (_, limiter) in self.limiters.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: u32, seconds: u64) -> LocalLimiter {
        LocalLimiter::new([Policy::new("test", Rate { limit, window: Duration::from_secs(seconds) })])
    }

    #[test]
    fn rates_parse_strictly() {
        assert_eq!("100/60s".parse(), Ok(Rate { limit: 100, window: Duration::from_secs(60) }));
        for bad in ["", "100", "100/60", "0/60s", "10/0s", "x/60s", "10/90000s", "-1/60s", "2000000/1s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allows_the_quota_then_refuses_until_one_comes_back() {
        let limiter = limiter(3, 60);
        let remaining: Vec<u32> = (0..3).map(|_| limiter.check("test", "a").remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check("test", "a");
        assert!(!refused.allowed);
        // One request comes back every 20 s.
        assert!(
            refused.reset > Duration::from_secs(19) && refused.reset <= Duration::from_secs(20),
            "{:?}",
            refused.reset
        );
        assert!(limiter.check("test", "b").allowed, "keys are counted apart");
    }

    #[test]
    fn headers_follow_the_structured_field_syntax() {
        let limiter = limiter(2, 10);
        let mut headers = HeaderMap::new();
        limiter.check("test", "k").write_headers(&mut headers);
        assert_eq!(headers[RATELIMIT_POLICY], r#""test";q=2;w=10"#);
        assert_eq!(headers[RATELIMIT], r#""test";r=1;t=5"#);
    }

    #[test]
    fn a_refusal_is_429_with_retry_after_equal_to_t() {
        let limiter = limiter(1, 30);
        assert!(limiter.check("test", "k").allowed);
        let refused = limiter.check("test", "k");
        let response = refused.rejection();
        assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()[http::header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert_eq!(retry_after, 30);
        assert_eq!(response.headers()[RATELIMIT], r#""test";r=0;t=30"#);
    }
}
