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
//! [`SharedRedis`], against one bucket per key in Redis (quotas global across instances, on
//! Redis's clock). A busy key does not cost a Redis call per request: an atomic script takes
//! a *lease* of several requests' worth of quota at once, and the instance spends it locally
//! for at most [`LEASE_TIME`]. A lease grows while its key is busy (doubling each time one
//! runs dry) and shrinks back to one request when it is not, and never holds more than
//! 1/[`MAX_LEASE_SHARE`] of its quota, so a quota of fewer than that many requests is still
//! decided by Redis for every request. Quota is taken before it is spent, so instances
//! together never admit more than the quota; what a lease leaves unspent is given back with
//! the key's next one, so they admit less only by what leases hold at the moment (or what a
//! key that went quiet left in its last lease). A refusal is remembered until Redis said a request would be allowed again.
//! When Redis cannot answer, the limiter decides in memory instead and counts the decision
//! in `ratelimit_local_fallbacks_total`: a Redis outage loosens quotas to per instance for its
//! duration rather than failing or refusing requests.
//! [`enforce`] applies one decision to a request.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

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
        let detail = format!("Too many requests; retry in {} s.", self.retry_after_secs());
        self.refusing(
            Problem::new(http::StatusCode::TOO_MANY_REQUESTS, crate::problem::Code::RateLimited, detail)
                .into_response(),
        )
    }

    /// Seconds a refused client waits: `t`, and at least one.
    pub fn retry_after_secs(&self) -> u64 {
        self.reset_secs().max(1)
    }

    /// `response` (a 429 in another body than a problem, for an endpoint whose clients expect
    /// one) with the headers of [`Decision::rejection`].
    pub fn refusing(&self, mut response: Response) -> Response {
        let retry_after = self.retry_after_secs();
        response.headers_mut().insert(http::header::RETRY_AFTER, retry_after.into());
        let mut decision = self.clone();
        decision.reset = Duration::from_secs(retry_after);
        decision.write_headers(response.headers_mut());
        response
    }
}

/// Counts one request against `key` under `policy`, and answers 429 when over quota; otherwise
/// runs the request and adds the rate-limit headers to its response.
pub async fn enforce(limiter: &Limiter, policy: &str, key: &str, request: Request, next: Next) -> Response {
    enforce_with(limiter, policy, key, request, next, Decision::rejection).await
}

/// [`enforce`], answering a refusal with `refuse` (built on [`Decision::refusing`]).
pub async fn enforce_with(
    limiter: &Limiter,
    policy: &str,
    key: &str,
    request: Request,
    next: Next,
    refuse: impl FnOnce(&Decision) -> Response,
) -> Response {
    let decision = limiter.check(policy, key).await;
    if !decision.allowed {
        return refuse(&decision);
    }
    let mut response = next.run(request).await;
    decision.write_headers(response.headers_mut());
    response
}

/// How long a lease of quota may be spent before what is left of it is given up.
pub const LEASE_TIME: Duration = Duration::from_millis(100);
/// A lease holds at most this fraction of its quota.
pub const MAX_LEASE_SHARE: u32 = 64;

/// Named quotas, decided in Redis when it is configured and answers, in memory otherwise.
pub struct Limiter {
    local: LocalLimiter,
    shared: Option<(Arc<SharedRedis>, Leases)>,
}

impl Limiter {
    pub fn new(policies: impl IntoIterator<Item = Policy>, shared: Option<Arc<SharedRedis>>) -> Self {
        let local = LocalLimiter::new(policies);
        let shared = shared.map(|redis| (redis, Leases::new(local.limiters.keys().copied())));
        Self { local, shared }
    }

    /// Counts one request against `key` under the named policy.
    ///
    /// # Panics
    /// If no policy of that name was given to [`Limiter::new`].
    pub async fn check(&self, policy: &str, key: &str) -> Decision {
        let decision = match &self.shared {
            Some((redis, leases)) => {
                let policy = self.local.policy(policy);
                match leases.spend(policy, key) {
                    Spent::Decided(decision) => decision,
                    Spent::Ask { wanted, give_back, renew } => {
                        match take_in_redis(redis, policy, key, wanted, give_back).await {
                            Ok(grant) => leases.keep(policy, key, wanted, renew, &grant),
                            Err(_) => {
                                metrics::counter!("ratelimit_local_fallbacks_total").increment(1);
                                self.local.check(policy.name, key)
                            }
                        }
                    }
                }
            }
            None => self.local.check(policy, key),
        };
        if !decision.allowed {
            metrics::counter!("ratelimit_rejections_total", "policy" => decision.policy.name).increment(1);
        }
        decision
    }

    /// Drops in-memory buckets that are full again and leases that are over; call now and
    /// then so memory follows active clients.
    pub fn forget_idle(&self) {
        self.local.forget_idle();
        if let Some((_, leases)) = &self.shared {
            leases.forget_idle();
        }
    }
}

/// GCRA over one key holding the bucket's theoretical arrival time, in microseconds of Redis's
/// own clock (so instances with skewed clocks still agree). Gives back `ARGV[4]` requests'
/// worth left over from a lease, takes up to `ARGV[3]` at once, and returns
/// `{taken, remaining, µs}`: when at least one was taken, `µs` is
/// the time until the bucket is full again; when none was, the time until one is allowed.
/// The key expires once the bucket would be full again.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = (tonumber(redis.call('GET', KEYS[1])) or now) - tonumber(ARGV[4]) * interval
if tat < now then tat = now end
local available = math.floor((now + window - tat) / interval)
if available < 1 then
  return {0, 0, tat + interval - window - now}
end
local taken = math.min(tonumber(ARGV[3]), available)
local next_tat = tat + taken * interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {taken, available - taken, next_tat - now}
",
    )
});

/// What Redis answered for a lease.
struct Grant {
    taken: u32,
    remaining: u32,
    /// Until the bucket is full again, or, when nothing was taken, until a request is allowed.
    wait: Duration,
}

async fn take_in_redis(
    redis: &SharedRedis,
    policy: &Policy,
    key: &str,
    wanted: u32,
    give_back: u32,
) -> Result<Grant, crate::redis::Unavailable> {
    let bucket = redis.key(format_args!("ratelimit:{}:{key}", policy.name));
    let interval = u64::try_from(policy.emission_interval().as_micros()).unwrap_or(u64::MAX).max(1);
    let (taken, remaining, wait): (u32, u32, u64) = redis
        .call("ratelimit", async |connection| {
            GCRA.key(&bucket).arg(interval).arg(policy.limit).arg(wanted).arg(give_back).invoke_async(connection).await
        })
        .await?;
    Ok(Grant { taken: taken.min(wanted), remaining: remaining.min(policy.limit), wait: Duration::from_micros(wait) })
}

/// This instance's leases of shared quota, per policy and key.
struct Leases {
    by_policy: HashMap<&'static str, Mutex<HashMap<String, Lease>>>,
}

/// Quota taken from Redis for one key and not yet spent, or a refusal still in force.
struct Lease {
    /// Requests' worth still to spend.
    unspent: u32,
    /// Spent from this lease, which sizes the next one.
    spent: u32,
    /// What this lease asked Redis for.
    size: u32,
    /// When what is unspent is given up.
    ends: Instant,
    /// When the Redis bucket is full again, as of the grant (unspent quota counts as used).
    full_at: Instant,
    /// Set when Redis refused: no request is allowed before then.
    refused_until: Option<Instant>,
    /// Until then a request is asking Redis for the next lease, and others that find this
    /// one spent ask for themselves only. A deadline, so a renewal that never answers (its
    /// caller gone, Redis down) does not stop the next.
    renewing_until: Option<Instant>,
}

enum Spent {
    /// Decided from the lease, without Redis.
    Decided(Decision),
    /// Ask Redis for `wanted` requests' worth, giving back what the key's last lease left;
    /// `renew` when the answer is the key's next lease.
    Ask { wanted: u32, give_back: u32, renew: bool },
}

impl Leases {
    fn new(policies: impl IntoIterator<Item = &'static str>) -> Self {
        Self { by_policy: policies.into_iter().map(|name| (name, Mutex::new(HashMap::new()))).collect() }
    }

    fn of(&self, policy: &Policy) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.by_policy[policy.name].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spends one request from `key`'s lease, or says how much to ask Redis for.
    fn spend(&self, policy: &Policy, key: &str) -> Spent {
        let now = Instant::now();
        let mut leases = self.of(policy);
        let Some(lease) = leases.get_mut(key) else { return Spent::Ask { wanted: 1, give_back: 0, renew: true } };
        if let Some(until) = lease.refused_until
            && until > now
        {
            return Spent::Decided(Decision {
                policy: policy.clone(),
                allowed: false,
                remaining: 0,
                reset: until - now,
            });
        }
        if lease.unspent > 0 && lease.ends > now {
            lease.unspent -= 1;
            lease.spent += 1;
            return Spent::Decided(lease.decision(policy, now));
        }
        if lease.renewing_until.is_some_and(|until| until > now) {
            return Spent::Ask { wanted: 1, give_back: 0, renew: false };
        }
        lease.renewing_until = Some(now + LEASE_TIME);
        let give_back = std::mem::take(&mut lease.unspent);
        let wanted = if lease.refused_until.is_some() {
            1
        } else if lease.ends > now {
            // Spent within its time: the key is busier than the lease was sized for.
            lease.size.saturating_mul(2)
        } else {
            lease.spent
        };
        Spent::Ask { wanted: wanted.clamp(1, (policy.limit / MAX_LEASE_SHARE).max(1)), give_back, renew: true }
    }

    /// Keeps what Redis granted, one request of which is this one, and decides this request.
    fn keep(&self, policy: &Policy, key: &str, wanted: u32, renew: bool, grant: &Grant) -> Decision {
        let now = Instant::now();
        let mut leases = self.of(policy);
        if grant.taken == 0 {
            let refused_until = Some(now + grant.wait);
            let refused =
                Lease { unspent: 0, spent: 0, size: 1, ends: now, full_at: now, refused_until, renewing_until: None };
            leases.insert(key.to_owned(), refused);
            return Decision { policy: policy.clone(), allowed: false, remaining: 0, reset: grant.wait };
        }
        // What is still unspent of the lease this one replaces was paid for: it carries over.
        let carried = leases.get(key).filter(|lease| lease.ends > now).map_or(0, |lease| lease.unspent);
        let unspent = grant.taken - 1 + carried;
        if renew {
            let lease = Lease {
                unspent,
                spent: 1,
                size: wanted,
                ends: now + LEASE_TIME,
                full_at: now + grant.wait,
                refused_until: None,
                renewing_until: None,
            };
            leases.insert(key.to_owned(), lease);
        }
        Decision {
            policy: policy.clone(),
            allowed: true,
            remaining: (grant.remaining + unspent).min(policy.limit),
            reset: grant.wait.saturating_sub(policy.emission_interval() * unspent),
        }
    }

    fn forget_idle(&self) {
        let now = Instant::now();
        for leases in self.by_policy.values() {
            let mut leases = leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            leases.retain(|_, lease| {
                [Some(lease.ends), lease.refused_until, lease.renewing_until].into_iter().flatten().any(|t| t > now)
            });
            leases.shrink_to_fit();
        }
    }
}

impl Lease {
    /// The headers' view of the bucket: the Redis bucket, with what this lease holds unspent
    /// counted as still available.
    fn decision(&self, policy: &Policy, now: Instant) -> Decision {
        let interval = policy.emission_interval();
        let until_full = self.full_at.saturating_duration_since(now);
        let used = until_full.as_micros().div_ceil(interval.as_micros().max(1));
        let in_redis = u128::from(policy.limit).saturating_sub(used);
        let remaining = u32::try_from(in_redis).unwrap_or(u32::MAX).saturating_add(self.unspent).min(policy.limit);
        Decision {
            policy: policy.clone(),
            allowed: true,
            remaining,
            reset: until_full.saturating_sub(interval * self.unspent),
        }
    }
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

    /// What a lease says to ask Redis for, as `(wanted, give_back, renew)`.
    fn asks(leases: &Leases, policy: &Policy) -> (u32, u32, bool) {
        match leases.spend(policy, "k") {
            Spent::Ask { wanted, give_back, renew } => (wanted, give_back, renew),
            Spent::Decided(decision) => panic!("decided without Redis: {decision:?}"),
        }
    }

    fn grant(taken: u32, remaining: u32) -> Grant {
        Grant { taken, remaining, wait: Duration::from_secs(1) }
    }

    #[test]
    fn a_lease_doubles_while_spent_in_time_and_gives_back_what_it_left() {
        // 6,400 a minute: a lease holds at most 100.
        let policy = Policy::new("test", Rate { limit: 6400, window: Duration::from_secs(60) });
        let leases = Leases::new(["test"]);
        assert_eq!(asks(&leases, &policy), (1, 0, true));
        assert!(leases.keep(&policy, "k", 1, true, &grant(1, 6399)).allowed);
        assert_eq!(asks(&leases, &policy), (2, 0, true), "spent within its time: twice as much");
        assert_eq!(asks(&leases, &policy), (1, 0, false), "while one renews, the others ask for themselves");
        assert_eq!(leases.keep(&policy, "k", 2, true, &grant(2, 6397)).remaining, 6398);
        let Spent::Decided(decision) = leases.spend(&policy, "k") else { panic!("the lease holds one more") };
        assert!(decision.allowed);
        for size in [4, 8, 16, 32, 64, 100, 100] {
            assert_eq!(asks(&leases, &policy).0, size);
            leases.keep(&policy, "k", size, true, &grant(size, 1000));
            for _ in 1..size {
                assert!(matches!(leases.spend(&policy, "k"), Spent::Decided(decision) if decision.allowed));
            }
        }
        assert_eq!(asks(&leases, &policy).0, 100);
        leases.keep(&policy, "k", 100, true, &grant(100, 1000));
        for _ in 0..9 {
            leases.spend(&policy, "k");
        }
        std::thread::sleep(LEASE_TIME + Duration::from_millis(10));
        assert_eq!(asks(&leases, &policy), (10, 90, true), "an ended lease gives back its rest and sizes the next");
    }

    #[test]
    fn a_refusal_is_kept_until_redis_said_a_request_is_allowed() {
        let policy = Policy::new("test", Rate { limit: 10, window: Duration::from_secs(60) });
        let leases = Leases::new(["test"]);
        asks(&leases, &policy);
        let refused =
            leases.keep(&policy, "k", 1, true, &Grant { taken: 0, remaining: 0, wait: Duration::from_secs(6) });
        assert!(!refused.allowed);
        let Spent::Decided(again) = leases.spend(&policy, "k") else { panic!("Redis asked again") };
        assert!(!again.allowed && again.reset <= Duration::from_secs(6) && again.reset > Duration::from_secs(5));
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
