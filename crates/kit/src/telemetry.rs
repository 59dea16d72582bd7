//! JSON log lines, cheap enough to write one per request.
//!
//! [`JsonLines`] is a `tracing` layer that formats each event as one JSON object (timestamp,
//! level, target, message, fields) and adds the `request_id` and `trace_id` of the request
//! being served, taken from the [`RequestContext`] rather than from a span, so no span is
//! created per request. Formatted lines go to a background thread that writes them to stdout
//! in batches every few milliseconds; [`FlushGuard`] drains it when dropped, so nothing is lost at shutdown.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::context::RequestContext;

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The layer; see the module documentation.
pub struct JsonLines {
    lines: SyncSender<Message>,
}

/// Flushes every pending line when dropped.
pub struct FlushGuard {
    lines: SyncSender<Message>,
}

/// Starts the writer thread; lines are queued (up to 64 Ki; a full queue makes loggers wait)
/// and written in batches.
pub fn json_lines() -> (JsonLines, FlushGuard) {
    let (lines, queue) = sync_channel(64 * 1024);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&queue))
        .expect("the log writer thread starts");
    (JsonLines { lines: lines.clone() }, FlushGuard { lines })
}

/// Drains the queue every few milliseconds. Polling instead of blocking means a request that
/// logs never has to wake this thread: a send is just a push onto the queue.
fn write_batches(queue: &Receiver<Message>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let mut acknowledgements = Vec::new();
        let disconnected = loop {
            match queue.try_recv() {
                Ok(Message::Line(line)) => batch.extend_from_slice(&line),
                Ok(Message::Flush(ack)) => acknowledgements.push(ack),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if !batch.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&batch);
            let _ = stdout.flush();
            batch.clear();
        }
        for ack in acknowledgements {
            let _ = ack.send(());
        }
        if disconnected {
            return;
        }
        std::thread::sleep(WRITE_INTERVAL);
    }
}

/// How long a line may wait before it is written.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let (ack, flushed) = sync_channel(1);
        if self.lines.send(Message::Flush(ack)).is_ok() {
            let _ = flushed.recv_timeout(Duration::from_secs(2));
        }
    }
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let metadata = event.metadata();
        let mut line = String::with_capacity(320);
        line.push_str(r#"{"timestamp":""#);
        crate::timestamp::push_micros(&mut line, &chrono::Utc::now());
        let _ = write!(line, r#"","level":"{}","target":"#, metadata.level());
        push_json_string(&mut line, metadata.target());
        let mut fields = JsonFields { line, has_request_id: false };
        event.record(&mut fields);
        let mut line = fields.line;
        if !fields.has_request_id
            && let Some(context) = RequestContext::current()
        {
            line.push_str(r#","request_id":"#);
            push_json_string(&mut line, &context.request_id);
            line.push_str(r#","trace_id":"#);
            push_json_string(&mut line, &context.trace_id);
        }
        line.push_str("}\n");
        let _ = self.lines.send(Message::Line(line.into_bytes()));
    }
}

struct JsonFields {
    line: String,
    has_request_id: bool,
}

impl JsonFields {
    fn key(&mut self, field: &Field) {
        if field.name() == "request_id" {
            self.has_request_id = true;
        }
        self.line.push(',');
        push_json_string(&mut self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(&mut self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        push_json_string(&mut self.line, &format!("{value:?}"));
    }
}

fn push_json_string(line: &mut String, value: &str) {
    if crate::json::is_plain(value) {
        line.push('"');
        line.push_str(value);
        line.push('"');
        return;
    }
    // Writing JSON into a String cannot fail.
    let quoted = serde_json::to_string(value).expect("strings serialize");
    line.push_str(&quoted);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    /// Emits events through a layer whose queue the test reads instead of a writer thread.
    fn capture(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let (lines, queue) = sync_channel(16);
        let subscriber = tracing_subscriber::registry().with(JsonLines { lines });
        tracing::subscriber::with_default(subscriber, emit);
        queue
            .try_iter()
            .map(|message| match message {
                Message::Line(line) => {
                    assert_eq!(line.last(), Some(&b'\n'), "one line per event");
                    serde_json::from_slice(&line).expect("every line is JSON")
                }
                Message::Flush(_) => panic!("no flush was asked for"),
            })
            .collect()
    }

    #[test]
    fn an_event_becomes_one_json_object_with_typed_fields() {
        let lines = capture(|| {
            tracing::info!(status = 200u16, latency_ms = 1.5, route = "/x\"y", ok = true, "request handled")
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request handled");
        assert_eq!((line["status"].as_u64(), line["latency_ms"].as_f64()), (Some(200), Some(1.5)));
        assert_eq!((line["route"].as_str(), line["ok"].as_bool()), (Some("/x\"y"), Some(true)));
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(line.get("request_id").is_none(), "outside a request there is no request id");
    }

    #[test]
    fn events_inside_a_request_carry_its_ids() {
        let context = Arc::new(RequestContext::from_headers(&http::HeaderMap::new(), "/p"));
        let request_id = context.request_id.clone();
        let lines = capture(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(context.scope(async { tracing::warn!("inside") }));
        });
        assert_eq!(lines[0]["request_id"], request_id.as_str());
        assert!(lines[0]["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    }

    #[test]
    fn strings_are_escaped() {
        let mut line = String::new();
        push_json_string(&mut line, "a\"b\n\u{1}");
        assert_eq!(line, r#""a\"b\n\u0001""#);
        for text in ["plain text", "", "é and \u{7f}", "\"", "\\", "\u{1f}", "tab\there"] {
            let mut line = String::new();
            push_json_string(&mut line, text);
            assert_eq!(line, serde_json::to_string(text).unwrap());
        }
    }
}
