//! RabbitMQ for the suites that need one: the shared broker (`ORDERLY_TEST_AMQP_URL`), a
//! private broker a test may kill and restart, and a consumer of `orderly.events`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{free_port, in_ci};

/// The RabbitMQ of the suites that need one; `None`, with the reason printed, when unset
/// outside CI. Under `CI=true` a missing broker fails the test.
pub fn amqp_url() -> Option<String> {
    match std::env::var("ORDERLY_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!("CI=true but ORDERLY_TEST_AMQP_URL is not set: the RabbitMQ suite must run in CI"),
        _ => {
            eprintln!("skipping a RabbitMQ scenario: ORDERLY_TEST_AMQP_URL is not set");
            None
        }
    }
}

/// A message taken from `orderly.events`.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub routing_key: String,
    pub persistent: bool,
    pub content_type: String,
    pub body: Value,
    /// The `traceparent` header, when the message has one.
    pub traceparent: Option<String>,
}

/// A queue bound to every routing key of `orderly.events`, consumed with manual acks into a
/// list, reconnecting whenever the broker goes away. The queue is durable (it outlives a broker
/// restart) and expires a minute after its consumer is gone.
pub struct EventConsumer {
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventConsumer {
    /// Binds and starts consuming; returns once the queue is bound, so every event published
    /// from now on reaches it.
    pub async fn start(url: &str) -> Self {
        let queue = format!("orderly-test-{}", Uuid::now_v7().simple());
        let received = Arc::new(Mutex::new(Vec::new()));
        let (bound, is_bound) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(consume(url.to_owned(), queue, Arc::clone(&received), bound));
        tokio::time::timeout(Duration::from_secs(20), is_bound).await.expect("the test queue is bound").unwrap();
        Self { received, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The messages whose `message_id` is in `ids`, in the order they arrived.
    pub fn received_of(&self, ids: &std::collections::HashSet<String>) -> Vec<Received> {
        self.received().into_iter().filter(|message| ids.contains(&message.message_id)).collect()
    }
}

impl Drop for EventConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn consume(
    url: String,
    queue: String,
    received: Arc<Mutex<Vec<Received>>>,
    bound: tokio::sync::oneshot::Sender<()>,
) {
    let mut bound = Some(bound);
    loop {
        if let Err(error) = consume_once(&url, &queue, &received, &mut bound).await {
            eprintln!("test consumer: {error}; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn consume_once(
    url: &str,
    queue: &str,
    received: &Mutex<Vec<Received>>,
    bound: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare("orderly.events".into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue.into(), options, arguments).await?;
    channel
        .queue_bind(
            queue.into(),
            "orderly.events".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if let Some(bound) = bound.take() {
        let _ = bound.send(());
    }
    let mut consumer =
        channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let properties = &delivery.properties;
        let message = Received {
            message_id: properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            persistent: *properties.delivery_mode() == Some(2),
            content_type: properties.content_type().as_ref().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            body: serde_json::from_slice(&delivery.data).expect("events are JSON"),
            traceparent: properties.headers().as_ref().and_then(|headers| match headers.inner().get("traceparent") {
                Some(AMQPValue::LongString(value)) => Some(value.to_string()),
                _ => None,
            }),
        };
        received.lock().unwrap().push(message);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// A RabbitMQ node of a test's own, on free ports, for scenarios that kill the broker and
/// start it again (its durable exchanges, queues and persistent messages survive, as on a real
/// restart). Killed when dropped.
pub struct PrivateRabbitMq {
    dir: tempdir::Dir,
    port: u16,
    name: String,
    pid: Option<u32>,
}

mod tempdir {
    /// A folder removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl PrivateRabbitMq {
    /// `None`, with the reason printed, when `rabbitmq-server` cannot be run outside CI; under
    /// `CI=true` that fails the test.
    pub fn start() -> Option<Self> {
        let name = format!("orderlytest{}", Uuid::now_v7().simple());
        let dir = tempdir::Dir(std::env::temp_dir().join(&name));
        let mut broker = Self { dir, port: free_port(), name, pid: None };
        match broker.spawn() {
            Ok(()) => Some(broker),
            Err(error) if in_ci() => panic!("CI=true but rabbitmq-server cannot be started: {error}"),
            Err(error) => {
                eprintln!("skipping a RabbitMQ outage scenario: rabbitmq-server cannot be started: {error}");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the node at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts it again on the same port, with what it had written to disk.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("rabbitmq-server restarts");
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let dir = &self.dir.0;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("plugins"), "[].")?;
        std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{}\n", self.port))?;
        let _ = std::fs::remove_file(dir.join("pid"));
        // The server runs as the `rabbitmq` user when started by root: it must own its folder.
        let _ = std::process::Command::new("chown").args(["-R", "rabbitmq"]).arg(dir).status();
        let log = std::fs::File::create(dir.join("server.log"))?;
        std::process::Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", format!("{}@localhost", self.name))
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(pid) = std::fs::read_to_string(dir.join("pid"))
                && let Ok(pid) = pid.trim().parse()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                self.pid = Some(pid);
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!("rabbitmq-server did not start within 60 s: {log}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        self.kill();
    }
}
