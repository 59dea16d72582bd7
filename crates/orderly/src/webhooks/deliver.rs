//! The delivery runner: sends due deliveries, records each attempt, schedules retries and
//! disables endpoints that are gone or keep failing.
//!
//! Each worker runs one. It claims deliveries an endpoint at a time, at most
//! `per_endpoint` in flight to any one endpoint and `concurrency` in all, so an endpoint that
//! hangs holds its own slots and nobody else's. A claim is a lease longer than an attempt can
//! take; a worker that dies mid-attempt leaves it to lapse, and the delivery is sent again
//! (at-least-once: receivers deduplicate by `Orderly-Event-Id`). An attempt's outcome is
//! written only if its claim is still the delivery's latest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::StatusCode;
use reqwest::Url;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::{Database, DbError, now, span};
use crate::events::store::{Event, find_event};

use super::signature;
use super::store::{self, Attempt, Claimed, Endpoint, Next};
use super::target::{self, AllowList, Scheme};

/// What a receiver's response body is kept of, per attempt.
const RESPONSE_BODY_KEPT: usize = 4096;
/// Sent with every delivery.
pub const USER_AGENT: &str = concat!("Orderly-Webhooks/", env!("CARGO_PKG_VERSION"));

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The wait before each retry: after the first attempt the first, and so on; a delivery
    /// whose retries are spent has failed.
    pub schedule: Vec<Duration>,
    /// How long one attempt may take, connecting and answering.
    pub timeout: Duration,
    /// An endpoint failing this long, a delivery of it out of retries, is disabled.
    pub disable_after: Duration,
    /// Attempts in flight at once, in all.
    pub concurrency: usize,
    /// Attempts in flight at once to one endpoint.
    pub per_endpoint: usize,
    /// How often an idle runner looks for due deliveries (new ones wake it at once).
    pub poll_interval: Duration,
}

impl Settings {
    /// A claim outlasts any attempt: its request, and writing what came of it.
    fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(5)
    }

    /// When the attempt numbered `attempt` failed at `at`, the next one, if any is left: the
    /// schedule's wait ±20 %, or longer if the receiver asked (`Retry-After`, up to the
    /// schedule's longest wait).
    pub fn retry_at(&self, attempt: i64, at: DateTime<Utc>, retry_after: Option<Duration>) -> Option<DateTime<Utc>> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        let wait = *self.schedule.get(index)?;
        let jittered =
            wait.mul_f64(0.8) + orderly_kit::resilience::Backoff { base: wait.mul_f64(0.4), max: wait }.delay(0);
        let longest = self.schedule.iter().max().copied().unwrap_or_default();
        let asked = retry_after.map_or(Duration::ZERO, |asked| asked.min(longest));
        Some(at + span(jittered.max(asked)))
    }
}

/// Sends due deliveries for as long as it runs. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Runner {
    pub db: Database,
    pub settings: Settings,
    pub allow: Arc<AllowList>,
    /// Rung when deliveries are created in this process.
    pub wake: Arc<Notify>,
    https: reqwest::Client,
    http: reqwest::Client,
}

/// What one attempt saw.
struct Sent {
    status: Option<StatusCode>,
    error: Option<String>,
    body: Option<String>,
    retry_after: Option<Duration>,
    duration: Duration,
}

impl Runner {
    pub fn new(db: Database, settings: Settings, allow: Arc<AllowList>, wake: Arc<Notify>) -> Result<Self, String> {
        let client = |scheme| {
            target::client(Arc::clone(&allow), scheme, settings.timeout, USER_AGENT)
                .map_err(|error| format!("cannot build the webhook client: {error}"))
        };
        Ok(Self { https: client(Scheme::Https)?, http: client(Scheme::Http)?, db, settings, allow, wake })
    }

    /// Claims and sends until `stop` turns true, then lets the attempts under way finish
    /// (each is bounded by the timeout).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut in_flight: HashMap<Uuid, usize> = HashMap::new();
        let mut endpoint_of: HashMap<tokio::task::Id, Uuid> = HashMap::new();
        let mut running = JoinSet::new();
        let mut failures = 0_u32;
        loop {
            let pause = match this.fill(&mut running, &mut in_flight, &mut endpoint_of).await {
                Ok(()) => {
                    failures = 0;
                    this.settings.poll_interval
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(%error, "cannot claim webhook deliveries; retrying");
                    }
                    failures = failures.saturating_add(1);
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let id = match done { Ok((id, ())) => id, Err(error) => error.id() };
                    if let Some(endpoint) = endpoint_of.remove(&id)
                        && let Some(count) = in_flight.get_mut(&endpoint)
                    {
                        *count -= 1;
                        if *count == 0 {
                            in_flight.remove(&endpoint);
                        }
                    }
                }
                () = this.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Claims what the free slots allow, endpoint by endpoint, and starts sending it.
    async fn fill(
        self: &Arc<Self>,
        running: &mut JoinSet<()>,
        in_flight: &mut HashMap<Uuid, usize>,
        endpoint_of: &mut HashMap<tokio::task::Id, Uuid>,
    ) -> Result<(), DbError> {
        if running.len() >= self.settings.concurrency {
            return Ok(());
        }
        let at = now();
        let due = self.db.write().run(async move |conn| store::endpoints_due(conn, at).await).await?;
        for endpoint_id in due {
            let busy = in_flight.get(&endpoint_id).copied().unwrap_or(0);
            let free = self.settings.per_endpoint.saturating_sub(busy).min(self.settings.concurrency - running.len());
            if free == 0 {
                continue;
            }
            let (limit, lease_until) = (i64::try_from(free).unwrap_or(i64::MAX), now() + span(self.settings.lease()));
            let claimed = self
                .db
                .write()
                .run(async move |conn| store::claim(conn, endpoint_id, limit, lease_until).await)
                .await?;
            for delivery in claimed {
                *in_flight.entry(endpoint_id).or_default() += 1;
                let this = Arc::clone(self);
                let span = attempt_span(&delivery);
                let task = running.spawn(async move { this.attempt(delivery).await }.instrument(span));
                endpoint_of.insert(task.id(), endpoint_id);
            }
            if running.len() >= self.settings.concurrency {
                break;
            }
        }
        Ok(())
    }

    /// Makes one attempt of a claimed delivery and writes what came of it.
    async fn attempt(&self, delivery: Claimed) {
        let (endpoint_id, event_id) = (delivery.endpoint_id, delivery.event_id);
        let loaded = self
            .db
            .current()
            .run(async move |conn| {
                let endpoint = store::find_endpoint(conn, endpoint_id).await?;
                let event = find_event(conn, event_id).await?;
                Ok::<_, DbError>((endpoint, event))
            })
            .await;
        let (endpoint, event) = match loaded {
            Ok((Some(endpoint), event)) => (endpoint, event),
            // Deleted with its deliveries: nothing to write.
            Ok((None, _)) => return,
            Err(error) => {
                // The claim lapses and the delivery is attempted again.
                tracing::warn!(%error, delivery.id = %delivery.id, "could not load a webhook delivery");
                return;
            }
        };
        let attempted_at = now();
        let sent = match &event {
            Some(event) if endpoint.enabled => self.send(&endpoint, event, attempted_at).await,
            Some(_) => Sent::unsent("the endpoint is disabled"),
            None => Sent::unsent("the event is no longer kept"),
        };
        let succeeded = sent.status.is_some_and(|status| status.is_success());
        let attempt_span = orderly_kit::trace::current();
        if let Some(status) = sent.status {
            attempt_span.record("http.response.status_code", status.as_u16());
        }
        if !succeeded {
            attempt_span.record("otel.status_code", "ERROR");
        }
        let gone = sent.status == Some(StatusCode::GONE);
        let next = if succeeded {
            Next::Succeeded
        } else if gone || event.is_none() || !endpoint.enabled {
            Next::Failed
        } else {
            match self.settings.retry_at(delivery.attempt_count, now(), sent.retry_after) {
                Some(at) => Next::RetryAt(at),
                None => Next::Failed,
            }
        };
        let outcome = match (&next, gone) {
            (Next::Succeeded, _) => "succeeded",
            (Next::RetryAt(_), _) => "retrying",
            (Next::Failed, true) => "gone",
            (Next::Failed, false) => "failed",
        };
        metrics::histogram!("orderly_webhook_attempt_seconds").record(sent.duration.as_secs_f64());
        metrics::counter!("orderly_webhook_deliveries_total", "outcome" => outcome).increment(1);
        if !succeeded {
            tracing::info!(
                delivery.id = %delivery.id, webhook.id = %endpoint.id, attempt = delivery.attempt_count,
                status = sent.status.map(|s| s.as_u16()), error = sent.error.as_deref(), outcome,
                "a webhook delivery attempt failed"
            );
        }
        let attempt = Attempt {
            attempted_at,
            status_code: sent.status.map(|status| status.as_u16()),
            duration_ms: u64::try_from(sent.duration.as_millis()).unwrap_or(u64::MAX),
            error: sent.error,
            response_body: sent.body,
        };
        let disable_after = span(self.settings.disable_after);
        let written = self
            .db
            .write()
            .transaction(async move |conn| {
                if !store::record_attempt(conn, &delivery, attempt, &next).await? {
                    return Ok::<_, DbError>(false);
                }
                match next {
                    Next::Succeeded => store::endpoint_succeeded(conn, endpoint_id).await?,
                    _ if gone => {
                        store::disable_endpoint(conn, endpoint_id, "the endpoint answered 410 Gone").await?;
                    }
                    Next::RetryAt(_) => drop(store::endpoint_failed(conn, endpoint_id).await?),
                    Next::Failed => {
                        let since = store::endpoint_failed(conn, endpoint_id).await?;
                        if since.is_some_and(|since| now() - since >= disable_after) {
                            let reason = "every retry failed and no delivery has succeeded for too long";
                            store::disable_endpoint(conn, endpoint_id, reason).await?;
                        }
                    }
                }
                Ok(true)
            })
            .await;
        match written {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(webhook.id = %endpoint_id, "a delivery's claim was taken over; its attempt is not recorded")
            }
            // The claim lapses and the delivery is attempted again.
            Err(error) => tracing::warn!(%error, webhook.id = %endpoint_id, "could not record a webhook attempt"),
        }
    }

    /// POSTs the event, signed, to the endpoint.
    async fn send(&self, endpoint: &Endpoint, event: &Event, at: DateTime<Utc>) -> Sent {
        let started = Instant::now();
        let url = match Url::parse(&endpoint.url) {
            Ok(url) => url,
            Err(error) => return Sent::unsent(&format!("the URL does not parse: {error}")),
        };
        if let Err(refusal) = target::check_literal(&url, &self.allow) {
            return Sent::unsent(&refusal.to_string());
        }
        let client = if url.scheme() == "http" { &self.http } else { &self.https };
        let body = event.body.get().as_bytes().to_vec();
        let signature = signature::header(at.timestamp(), &body, &endpoint.signing_secrets(at));
        let request = client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("Orderly-Signature", signature)
            .header("Orderly-Event-Id", event.id.to_string())
            .header("Orderly-Event-Type", event.kind.as_str())
            .body(body);
        let request = match orderly_kit::context::outgoing_traceparent() {
            Some(traceparent) => request.header("traceparent", traceparent),
            None => request,
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                // An endpoint's URL may carry a token of the receiver's: never in an error.
                let error = error.without_url();
                let error = if error.is_timeout() {
                    format!("no response within {:?}", self.settings.timeout)
                } else {
                    error_chain(&error)
                };
                return Sent {
                    status: None,
                    error: Some(error),
                    body: None,
                    retry_after: None,
                    duration: started.elapsed(),
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), at);
        let mut kept = Vec::new();
        let mut error = None;
        while kept.len() < RESPONSE_BODY_KEPT {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_BODY_KEPT - kept.len())]),
                Ok(None) => break,
                Err(read) => {
                    error = Some(error_chain(&read.without_url()));
                    break;
                }
            }
        }
        if error.is_none() && !status.is_success() {
            error = Some(if status.is_redirection() {
                format!("the endpoint answered {status}; redirects are not followed")
            } else {
                format!("the endpoint answered {status}")
            });
        }
        let body = (!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into_owned());
        Sent { status: Some(status), error, body, retry_after, duration: started.elapsed() }
    }
}

/// An attempt's client span, continuing the trace of the event's publication.
fn attempt_span(delivery: &Claimed) -> tracing::Span {
    let span = orderly_kit::span!(
        "webhook delivery",
        otel.name = %format_args!("deliver {}", delivery.event_type),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.response.status_code = tracing::field::Empty,
        webhook.id = %delivery.endpoint_id,
        webhook.delivery.id = %delivery.id,
        webhook.event.id = %delivery.event_id,
        webhook.attempt = delivery.attempt_count,
    );
    orderly_kit::trace::continue_from(&span, delivery.traceparent.as_deref());
    span
}

impl Sent {
    fn unsent(reason: &str) -> Self {
        Self { status: None, error: Some(reason.to_owned()), body: None, retry_after: None, duration: Duration::ZERO }
    }
}

/// An error and its causes, one sentence: reqwest's own message omits why a connection failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &http::HeaderMap, at: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    (date.with_timezone(&Utc) - at).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(schedule: &[u64]) -> Settings {
        Settings {
            schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            timeout: Duration::from_secs(10),
            disable_after: Duration::from_secs(5 * 86400),
            concurrency: 8,
            per_endpoint: 2,
            poll_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn retries_follow_the_schedule_within_twenty_percent_then_stop() {
        let settings = settings(&[5, 300]);
        let at = now();
        for _ in 0..200 {
            let first = (settings.retry_at(1, at, None).unwrap() - at).to_std().unwrap();
            assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6), "{first:?}");
            let second = (settings.retry_at(2, at, None).unwrap() - at).to_std().unwrap();
            assert!(second >= Duration::from_secs(240) && second <= Duration::from_secs(360), "{second:?}");
        }
        assert_eq!(settings.retry_at(3, at, None), None);
    }

    #[test]
    fn a_receivers_retry_after_is_honoured_up_to_the_longest_wait() {
        let settings = settings(&[5, 300]);
        let at = now();
        let asked = (settings.retry_at(1, at, Some(Duration::from_secs(120))).unwrap() - at).to_std().unwrap();
        assert_eq!(asked, Duration::from_secs(120));
        let capped = (settings.retry_at(1, at, Some(Duration::from_secs(86400))).unwrap() - at).to_std().unwrap();
        assert_eq!(capped, Duration::from_secs(300));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&headers, at), Some(Duration::from_secs(30)));
        headers.insert(http::header::RETRY_AFTER, "Thu, 01 Jan 2026 00:01:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers, at), Some(Duration::from_secs(60)));
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, at), None);
    }
}
