//! Distributed tracing: W3C trace context (`traceparent`), and spans exported over OTLP/HTTP
//! when an endpoint is configured.
//!
//! Spans are `tracing` spans made with [`span!`](crate::span). Without an exporter it gives
//! `Span::none()` after one relaxed atomic load, so tracing off costs a request nothing else:
//! no span is allocated, no layer sees it. With one ([`export`]), a `tracing-opentelemetry`
//! layer turns the spans into OpenTelemetry spans, sampled by trace id (a caller's sampling
//! decision is followed), which a background thread sends in batches to
//! `<endpoint>/v1/traces` through the application's own runtime.
//!
//! A trace crosses processes and time as a `traceparent` value: read from a request
//! ([`continue_from`]), stored beside work done later (events, webhook deliveries) and
//! continued when that work runs, and sent with every outgoing call ([`outgoing`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing::{Instrument, Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

#[doc(hidden)]
pub use tracing as __tracing;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An `info`-level `tracing` span, with `info_span!`'s arguments, when spans are exported; else
/// `Span::none()`. `otel.name`, `otel.kind` and `otel.status_code` fields set the exported
/// span's name, kind and status.
#[macro_export]
macro_rules! span {
    ($($argument:tt)*) => {
        if $crate::trace::enabled() {
            $crate::trace::__tracing::info_span!($($argument)*)
        } else {
            $crate::trace::__tracing::Span::none()
        }
    };
}

/// A W3C `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a well-formed value (lower-case hex, non-zero ids, a known layout for version
    /// 00, anything after the four fields for later versions); `None` otherwise.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let well_formed = lower_hex(version, 2)
            && version != "ff"
            && lower_hex(trace_id, 32)
            && lower_hex(parent_id, 16)
            && lower_hex(flags, 2)
            && (version != "00" || parts.next().is_none());
        if !well_formed {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok().filter(|id| *id != 0)?;
        let parent_id = u64::from_str_radix(parent_id, 16).ok().filter(|id| *id != 0)?;
        let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
        Some(Self { trace_id, parent_id, sampled })
    }

    /// The trace id as 32 lower-case hex digits, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    fn of(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(context.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(context.span_id().to_bytes()),
            sampled: context.is_sampled(),
        })
    }

    /// As a remote parent.
    fn context(self) -> Context {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let parent = SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.parent_id),
            flags,
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(parent)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.parent_id, u8::from(self.sampled))
    }
}

/// Makes `span` a child of the span `traceparent` names (from a request header or stored with
/// the work). A missing or malformed value leaves `span` the root of a new trace.
pub fn continue_from(span: &Span, traceparent: Option<&str>) {
    if enabled()
        && let Some(parent) = traceparent.and_then(TraceParent::parse)
    {
        let _ = span.set_parent(parent.context());
    }
}

/// `span` as a `traceparent`, for work that continues it elsewhere; `None` when spans are not
/// exported.
pub fn traceparent_of(span: &Span) -> Option<TraceParent> {
    if !enabled() || span.is_none() {
        return None;
    }
    TraceParent::of(span.context().span().span_context())
}

/// The current span as a `traceparent`: what an outgoing call made now should carry.
pub fn outgoing() -> Option<TraceParent> {
    if !enabled() {
        return None;
    }
    traceparent_of(&Span::current())
}

/// The current span; without asking the subscriber when spans are not exported.
pub fn current() -> Span {
    if enabled() { Span::current() } else { Span::none() }
}

/// `tokio::spawn`, the task continuing the current span when spans are exported. Without them
/// the future is spawned as it is: wrapping it would move it once more for nothing.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if enabled() { tokio::spawn(future.instrument(Span::current())) } else { tokio::spawn(future) }
}

/// What [`export`] needs.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The receiver's base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The share of new traces kept, 0 to 1. A request's own `traceparent` decides for it.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service: &'static str,
    /// `service.version`.
    pub version: &'static str,
    /// More resource attributes (the process's role, say).
    pub attributes: Vec<(&'static str, String)>,
}

/// Exports spans until [`Exporting::shutdown`].
pub struct Exporting {
    provider: SdkTracerProvider,
}

/// The layer that exports spans and the handle that flushes them. Install the layer, then
/// call [`Exporting::enable`]: until then [`span!`](crate::span) makes no spans. Call from
/// within the Tokio runtime, which sends the batches.
pub fn export<S>(settings: &ExportSettings) -> Result<(impl Layer<S> + use<S>, Exporting), String>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| "exporting needs a Tokio runtime".to_owned())?;
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
    let endpoint = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(OnRuntime { client, runtime })
        .build()
        .map_err(|error| error.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(settings.service)
        .with_attribute(KeyValue::new("service.version", settings.version));
    for (key, value) in &settings.attributes {
        resource = resource.with_attribute(KeyValue::new(*key, value.clone()));
    }
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(sampler)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(settings.service))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        // Our spans, and warnings and errors inside them as span events; nothing of the
        // libraries (the exporter's own HTTP calls above all).
        .with_filter(filter_fn(|metadata| {
            metadata.target().starts_with("orderly") && (metadata.is_span() || *metadata.level() <= Level::WARN)
        }));
    Ok((layer, Exporting { provider }))
}

/// How long one batch may take to send.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Exporting {
    /// Starts making spans.
    pub fn enable(&self) {
        ENABLED.store(true, Ordering::Relaxed);
    }

    /// Stops making spans and sends every span that has ended.
    pub async fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        let provider = self.provider;
        // Blocks until the batch thread has sent what it holds, through this runtime.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "could not send the last spans");
        }
    }
}

/// The exporter's HTTP client: the batch thread has no runtime of its own, so each request is
/// sent as a task on the application's.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                headers.extend(response.headers().iter().map(|(name, value)| (name.clone(), value.clone())));
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_only_when_well_formed() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(valid).expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((parsed.parent_id, parsed.sampled), (0x00f0_67aa_0ba9_02b7, true));
        assert_eq!(parsed.to_string(), valid, "it is written back as it was read");
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn without_an_exporter_spans_are_none_and_nothing_propagates() {
        let span = crate::span!("anything", otel.kind = "server");
        assert!(span.is_none());
        continue_from(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(traceparent_of(&span), None);
        assert_eq!(outgoing(), None);
    }
}
