//! The payment provider seam: the built-in sandbox or an HTTP provider, behind one resilient
//! gateway.
//!
//! Every call carries an idempotency key that the provider deduplicates on, so a retry (ours
//! after a timeout, or a later attempt to pay the same order) never charges twice. The
//! gateway bounds each call with a timeout, retries timeouts and 5xx with exponential backoff
//! and full jitter inside an overall deadline, stops calling a failing provider (circuit
//! breaker), and caps concurrent calls (bulkhead) so a slow provider cannot hold every task.
//!
//! The HTTP provider protocol:
//! - `POST {url}/charges` `{amount, currency, payment_method, reference}` → 2xx `{id}`; 402
//!   `{code}` is a decline.
//! - `POST {url}/refunds` `{charge, amount, currency}` → 2xx `{id}`.
//! - Both with `Idempotency-Key` and `traceparent`; 5xx, 408, 429 and timeouts are retried.
//! - `GET {url}/charges?idempotency_key={key}` → 2xx `{id}` for the charge made under that key,
//!   402 `{code}` if it was declined, 404 if there is none: how an unknown outcome is settled
//!   without charging.
//! - `GET {url}/refunds?idempotency_key={key}` → 2xx `{id}` for the refund made under that key,
//!   404 if there is none.
//!
//! Metrics: `orderly_payment_provider_calls_total{operation, outcome}` counts every attempt
//! (`ok`, `failed`, `timeout`) and every refusal (`circuit_open`, `bulkhead_full`);
//! `orderly_payment_circuit_state{state}` is 1 for the breaker's present state
//! (`closed`, `open`, `half_open`) and 0 for the others.

use std::time::{Duration, Instant};

use orderly_kit::resilience::{Backoff, CircuitBreaker, CircuitState};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::PaymentsConfig;

/// A charge to make.
#[derive(Debug, Clone, Serialize)]
pub struct ChargeRequest {
    #[serde(skip)]
    pub key: String,
    pub amount: i64,
    pub currency: String,
    pub payment_method: String,
    /// The order being paid.
    pub reference: Uuid,
}

/// A refund of (part of) a charge.
#[derive(Debug, Clone, Serialize)]
pub struct RefundRequest {
    #[serde(skip)]
    pub key: String,
    /// The provider's id of the charge.
    pub charge: String,
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded { reference: String },
    Declined { code: String },
}

/// The provider could not be reached or did not answer in time; nothing is known to have
/// happened there (a retry with the same key settles it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("payment provider unavailable: {reason}")]
pub struct Unavailable {
    pub reason: &'static str,
    pub retry_after: Duration,
    /// Whether a call went out: if so, the provider may have acted on it.
    pub reached: bool,
}

/// One call's failure that is worth retrying.
#[derive(Debug)]
struct Retryable(&'static str);

pub struct PaymentGateway {
    provider: Provider,
    breaker: CircuitBreaker,
    bulkhead: Semaphore,
    attempts: u32,
    timeout: Duration,
    backoff: Backoff,
    deadline: Duration,
}

impl PaymentGateway {
    pub fn new(config: &PaymentsConfig) -> Result<Self, reqwest::Error> {
        let provider = match &config.payment_provider_url {
            Some(url) => Provider::Http(HttpProvider::new(url)?),
            None => Provider::Sandbox(Sandbox::new(config.sandbox_failure_rate, config.sandbox_latency)),
        };
        Ok(Self {
            provider,
            breaker: CircuitBreaker::new(config.payment_circuit_failures, config.payment_circuit_open),
            bulkhead: Semaphore::new(usize::try_from(config.payment_max_concurrent).unwrap_or(usize::MAX)),
            attempts: config.payment_provider_attempts,
            timeout: config.payment_provider_timeout,
            backoff: Backoff { base: config.payment_provider_backoff, max: Duration::from_secs(2) },
            deadline: config.payment_provider_deadline,
        })
    }

    /// Sets the circuit-state gauge; called before metrics are rendered.
    pub fn publish_metrics(&self) {
        let now = self.breaker.state();
        for (state, label) in
            [(CircuitState::Closed, "closed"), (CircuitState::Open, "open"), (CircuitState::HalfOpen, "half_open")]
        {
            metrics::gauge!("orderly_payment_circuit_state", "state" => label).set(if state == now {
                1.0
            } else {
                0.0
            });
        }
    }

    /// The longest a gateway call can take.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, Unavailable> {
        self.call("charge", || self.provider.charge(request)).await
    }

    /// What became of a charge attempted under `key`, without charging: `None` if the provider
    /// has no charge under that key.
    pub async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, Unavailable> {
        self.call("lookup", || self.provider.find_charge(key)).await
    }

    /// Refunds; returns the provider's id of the refund.
    pub async fn refund(&self, request: &RefundRequest) -> Result<String, Unavailable> {
        self.call("refund", || self.provider.refund(request)).await
    }

    /// The provider's id of the refund made under `key`, without refunding: `None` if the
    /// provider has no refund under that key.
    pub async fn find_refund(&self, key: &str) -> Result<Option<String>, Unavailable> {
        self.call("lookup", || self.provider.find_refund(key)).await
    }

    async fn call<T, F, Fut>(&self, operation: &'static str, call: F) -> Result<T, Unavailable>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Retryable>>,
    {
        let count = |outcome: &'static str| {
            metrics::counter!("orderly_payment_provider_calls_total", "operation" => operation, "outcome" => outcome)
                .increment(1);
        };
        let _slot = self.bulkhead.try_acquire().map_err(|_| {
            count("bulkhead_full");
            Unavailable {
                reason: "too many provider calls in flight",
                retry_after: Duration::from_secs(1),
                reached: false,
            }
        })?;
        let started = Instant::now();
        let mut reached = false;
        let mut last_failure = "no attempt fitted in the deadline";
        for attempt in 0..self.attempts {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            let permit = self.breaker.attempt().map_err(|open| {
                tracing::warn!(operation, "payment provider circuit is open");
                count("circuit_open");
                Unavailable {
                    reason: "circuit open",
                    retry_after: open.retry_after.max(Duration::from_secs(1)),
                    reached,
                }
            })?;
            reached = true;
            match tokio::time::timeout(self.timeout.min(remaining), call()).await {
                Ok(Ok(outcome)) => {
                    count("ok");
                    permit.succeeded();
                    return Ok(outcome);
                }
                Ok(Err(Retryable(reason))) => {
                    count("failed");
                    permit.failed();
                    last_failure = reason;
                }
                Err(_) => {
                    count("timeout");
                    permit.failed();
                    last_failure = "timed out";
                }
            }
            tracing::warn!(operation, attempt = attempt + 1, reason = last_failure, "payment provider call failed");
            if attempt + 1 < self.attempts {
                let delay = self.backoff.delay(attempt);
                if started.elapsed() + delay >= self.deadline {
                    break;
                }
                tokio::time::sleep(delay).await;
            }
        }
        Err(Unavailable { reason: last_failure, retry_after: Duration::from_secs(1), reached })
    }
}

enum Provider {
    Sandbox(Sandbox),
    Http(HttpProvider),
}

impl Provider {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, Retryable> {
        match self {
            Self::Sandbox(sandbox) => sandbox.charge(request).await,
            Self::Http(http) => http.charge(request).await,
        }
    }

    async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, Retryable> {
        match self {
            Self::Sandbox(sandbox) => sandbox.find_charge(key).await,
            Self::Http(http) => http.find_charge(key).await,
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, Retryable> {
        match self {
            Self::Sandbox(sandbox) => sandbox.refund(request).await,
            Self::Http(http) => http.refund(request).await,
        }
    }

    async fn find_refund(&self, key: &str) -> Result<Option<String>, Retryable> {
        match self {
            Self::Sandbox(sandbox) => sandbox.find_refund(key).await,
            Self::Http(http) => http.find_refund(key).await,
        }
    }
}

/// In-process provider for development and tests: `pm_card_visa` succeeds, anything else is
/// declined. Like a real provider, it answers a repeated key with the first outcome.
struct Sandbox {
    failure_rate: f64,
    latency: Duration,
    /// Keys charged, and whether the charge succeeded.
    charges: Remembered,
    /// Keys refunded.
    refunds: Remembered,
}

impl Sandbox {
    fn new(failure_rate: f64, latency: Duration) -> Self {
        Self { failure_rate, latency, charges: Remembered::default(), refunds: Remembered::default() }
    }

    /// The configured latency, then the configured share of failures.
    async fn arrive(&self) -> Result<(), Retryable> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.failure_rate == 0.0 {
            return Ok(());
        }
        let roll = f64::from(Uuid::new_v4().as_u128() as u32) / f64::from(u32::MAX);
        if roll < self.failure_rate { Err(Retryable("sandbox failure")) } else { Ok(()) }
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, Retryable> {
        self.arrive().await?;
        let first = self.charges.first(&request.key, request.payment_method == "pm_card_visa");
        Ok(sandbox_charge(first))
    }

    async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, Retryable> {
        self.arrive().await?;
        Ok(self.charges.get(key).map(sandbox_charge))
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, Retryable> {
        self.arrive().await?;
        Ok(format!("re_sandbox_{}", self.refunds.first(&request.key, true).reference.simple()))
    }

    async fn find_refund(&self, key: &str) -> Result<Option<String>, Retryable> {
        self.arrive().await?;
        Ok(self.refunds.get(key).map(|first| format!("re_sandbox_{}", first.reference.simple())))
    }
}

fn sandbox_charge(first: FirstCall) -> ChargeOutcome {
    if first.succeeded {
        ChargeOutcome::Succeeded { reference: format!("ch_sandbox_{}", first.reference.simple()) }
    } else {
        ChargeOutcome::Declined { code: "card_declined".into() }
    }
}

/// What the sandbox did the first time it was called with a key.
#[derive(Clone, Copy)]
struct FirstCall {
    succeeded: bool,
    /// Time-ordered, as a provider's references usually are.
    reference: Uuid,
}

/// The sandbox's memory of the keys it was called with: the last 100,000, by a 128-bit
/// digest, about 70 bytes each, so that a load test's calls do not show in the process's
/// memory (a cache entry per call cost four times that).
#[derive(Default)]
struct Remembered(std::sync::Mutex<RememberedKeys>);

#[derive(Default)]
struct RememberedKeys {
    calls: std::collections::HashMap<u128, FirstCall>,
    /// Oldest first, for forgetting.
    order: std::collections::VecDeque<u128>,
}

impl Remembered {
    const CAPACITY: usize = 100_000;

    fn digest(key: &str) -> u128 {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        u128::from_be_bytes(digest.as_ref()[..16].try_into().expect("a SHA-256 digest has 16 bytes to spare"))
    }

    /// The first call with `key`; this one, succeeding as `succeeded` says, if there was none.
    fn first(&self, key: &str, succeeded: bool) -> FirstCall {
        let digest = Self::digest(key);
        let mut keys = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(first) = keys.calls.get(&digest) {
            return *first;
        }
        if keys.order.len() >= Self::CAPACITY
            && let Some(oldest) = keys.order.pop_front()
        {
            keys.calls.remove(&oldest);
        }
        let first = FirstCall { succeeded, reference: Uuid::now_v7() };
        keys.calls.insert(digest, first);
        keys.order.push_back(digest);
        first
    }

    fn get(&self, key: &str) -> Option<FirstCall> {
        let digest = Self::digest(key);
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).calls.get(&digest).copied()
    }
}

struct HttpProvider {
    client: reqwest::Client,
    charges_url: String,
    refunds_url: String,
}

/// Keys are ours (letters, digits and dashes), safe in a query as they are.
fn by_key(url: &str, key: &str) -> String {
    format!("{url}?idempotency_key={key}")
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Declined {
    code: Option<String>,
}

impl HttpProvider {
    fn new(base: &str) -> Result<Self, reqwest::Error> {
        let base = base.trim_end_matches('/');
        Ok(Self {
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?,
            charges_url: format!("{base}/charges"),
            refunds_url: format!("{base}/refunds"),
        })
    }

    async fn post(&self, url: &str, key: &str, body: &impl Serialize) -> Result<reqwest::Response, Retryable> {
        self.send(self.client.post(url).header("Idempotency-Key", key).json(body)).await
    }

    /// One call, in a client span of its own whose `traceparent` the provider receives.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Retryable> {
        let mut request = request.build().map_err(|_| Retryable("unreachable"))?;
        let span = orderly_kit::span!(
            "payment provider",
            otel.name = %format_args!("{} {}", request.method(), request.url().path()),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %request.method(),
            url.path = request.url().path(),
            http.response.status_code = tracing::field::Empty,
        );
        let call = async {
            if let Some(traceparent) = orderly_kit::context::outgoing_traceparent()
                && let Ok(value) = http::HeaderValue::from_str(&traceparent)
            {
                request.headers_mut().insert("traceparent", value);
            }
            let response = self.client.execute(request).await;
            let Ok(response) = response else {
                span.record("otel.status_code", "ERROR");
                return Err(Retryable("unreachable"));
            };
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                span.record("otel.status_code", "ERROR");
                return Err(Retryable("provider error"));
            }
            Ok(response)
        };
        call.instrument(span.clone()).await
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, Retryable> {
        let response = self.post(&self.charges_url, &request.key, request).await?;
        charge_outcome(response).await
    }

    async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, Retryable> {
        let response = self.send(self.client.get(by_key(&self.charges_url, key))).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        charge_outcome(response).await.map(Some)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, Retryable> {
        let response = self.post(&self.refunds_url, &request.key, request).await?;
        if !response.status().is_success() {
            return Err(Retryable("unexpected answer"));
        }
        let created: Created = response.json().await.map_err(|_| Retryable("unreadable answer"))?;
        Ok(created.id)
    }

    async fn find_refund(&self, key: &str) -> Result<Option<String>, Retryable> {
        let response = self.send(self.client.get(by_key(&self.refunds_url, key))).await?;
        match response.status().as_u16() {
            404 => Ok(None),
            200..=299 => {
                let created: Created = response.json().await.map_err(|_| Retryable("unreadable answer"))?;
                Ok(Some(created.id))
            }
            _ => Err(Retryable("unexpected answer")),
        }
    }
}

/// A charge's outcome from the provider's answer: 2xx `{id}` or 402 `{code}`.
async fn charge_outcome(response: reqwest::Response) -> Result<ChargeOutcome, Retryable> {
    match response.status().as_u16() {
        200..=299 => {
            let created: Created = response.json().await.map_err(|_| Retryable("unreadable answer"))?;
            Ok(ChargeOutcome::Succeeded { reference: created.id })
        }
        402 => {
            let declined: Option<Declined> = response.json().await.ok();
            let code = declined.and_then(|d| d.code).unwrap_or_else(|| "card_declined".into());
            Ok(ChargeOutcome::Declined { code })
        }
        _ => Err(Retryable("unexpected answer")),
    }
}
