//! Logs and traces. Logs: one JSON object per line in production
//! (`orderly_kit::telemetry`), human-readable text on a terminal; every line inside a request
//! carries its `request_id` and `trace_id`. Traces: with `ORDERLY_OTLP_ENDPOINT` set, spans
//! are exported over OTLP (`orderly_kit::trace`).

use std::io::IsTerminal;

use orderly_kit::telemetry::{FlushGuard, json_lines};
use orderly_kit::trace::{ExportSettings, Exporting};
use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, LogFormat, TracingConfig};

/// What must outlive the process's work: pending log lines and spans.
pub struct Telemetry {
    _logs: Option<FlushGuard>,
    traces: Option<Exporting>,
}

impl Telemetry {
    /// Sends the spans not yet exported; log lines are flushed when this is dropped.
    pub async fn shutdown(mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown().await;
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level of logs.
/// `process` (`api` or `worker`) is recorded with every span. Call from within the runtime.
pub fn init(format: LogFormat, tracing: &TracingConfig, process: &'static str) -> Result<Telemetry, ConfigError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let traces = tracing.otlp_endpoint.as_ref().map(|endpoint| ExportSettings {
        endpoint: endpoint.clone(),
        sample_ratio: tracing.otlp_sample_ratio,
        service: "orderly",
        version: env!("CARGO_PKG_VERSION"),
        attributes: vec![("orderly.process", process.to_owned())],
    });
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    if json {
        let (layer, guard) = json_lines();
        let traces = install(tracing_subscriber::registry().with(layer.with_filter(filter())), traces.as_ref())?;
        Ok(Telemetry { _logs: Some(guard), traces })
    } else {
        // Colours only on a terminal: `text` into a file or a pipe is plain text.
        let ansi = std::io::stdout().is_terminal();
        let layer = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stdout);
        let traces = install(tracing_subscriber::registry().with(layer.with_filter(filter())), traces.as_ref())?;
        Ok(Telemetry { _logs: None, traces })
    }
}

/// Installs `logs`, with the span exporter when `traces` is set. A subscriber may already be
/// installed (tests run several apps in one process): then nothing is exported.
fn install<S>(logs: S, traces: Option<&ExportSettings>) -> Result<Option<Exporting>, ConfigError>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync + 'static,
{
    let Some(settings) = traces else {
        let _ = logs.try_init();
        return Ok(None);
    };
    let (layer, exporting) = orderly_kit::trace::export::<S>(settings)
        .map_err(|reason| ConfigError::new("ORDERLY_OTLP_ENDPOINT", reason))?;
    if logs.with(layer).try_init().is_ok() {
        exporting.enable();
        Ok(Some(exporting))
    } else {
        Ok(None)
    }
}
