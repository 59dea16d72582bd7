//! Logging: one JSON object per line in production (`orderly_kit::telemetry`), human-readable
//! text on a terminal. Every line inside a request carries its `request_id` and `trace_id`.

use std::io::IsTerminal;

use orderly_kit::telemetry::{FlushGuard, json_lines};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level. Keep the
/// returned guard until the process ends: dropping it flushes pending JSON lines.
pub fn init(format: LogFormat) -> Option<FlushGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    if json {
        let (layer, guard) = json_lines();
        // A subscriber may already be installed (tests run several apps in one process).
        tracing_subscriber::registry().with(layer.with_filter(filter())).try_init().ok().map(|()| guard)
    } else {
        // Colours only on a terminal: `text` into a file or a pipe is plain text.
        let ansi = std::io::stdout().is_terminal();
        let _ =
            tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(ansi).with_writer(std::io::stdout).try_init();
        None
    }
}
