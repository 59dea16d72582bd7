//! Configuration: command-line flags with `ORDERLY_*` environment fallbacks (and an optional
//! env-style config file), parsed once at start.
//!
//! Bad configuration stops the process with one line naming the setting; nothing starts
//! half-configured. Secret values are never echoed, not even by `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::webhooks::target::AllowList;
use clap::{Args, Parser, Subcommand, ValueEnum};
use orderly_kit::client_ip::TrustedProxies;
use orderly_kit::ratelimit::Rate;

#[derive(Debug, Parser)]
#[command(name = "orderly", version, about = "Orders-and-payments HTTP API", args_override_self = true)]
pub struct Cli {
    /// Read settings from an env-style file (`ORDERLY_X=value` lines); real environment
    /// variables and flags take precedence.
    #[arg(long, env = "ORDERLY_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (applies migrations first unless told not to).
    Serve(Box<ServeConfig>),
    /// Run the background work only (outbox relay, jobs), with `/healthz`, `/readyz` and
    /// `/metrics` on ORDERLY_WORKER_LISTEN. Takes the same settings as `serve`.
    Worker(Box<ServeConfig>),
    /// Apply database migrations and exit.
    Migrate(DatabaseConfig),
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Fill a database with demo users and products.
    Seed(SeedArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user. The password is read from ORDERLY_ADMIN_PASSWORD or, when unset, from the
    /// first line of standard input; never from the command line.
    CreateUser(CreateUserArgs),
}

#[derive(Debug, Args)]
pub struct CreateUserArgs {
    #[arg(long)]
    pub email: String,
    #[arg(long, default_value = "Administrator")]
    pub name: String,
    #[arg(long, value_enum, default_value = "admin")]
    pub role: RoleArg,
    #[command(flatten)]
    pub database: DatabaseConfig,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    Customer,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Insert the demo data set (users admin@example.com and customer@example.com, products).
    #[arg(long, required = true)]
    pub demo: bool,
    #[command(flatten)]
    pub database: DatabaseConfig,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Primary database: `sqlite://path/to/file.db` (embedded) or `postgres://…`.
    #[arg(long, env = "ORDERLY_DATABASE_URL", default_value = "sqlite://data/orderly.db", hide_env_values = true)]
    pub database_url: String,

    /// Optional read replica (PostgreSQL) for lists and figures; writes and reads of single
    /// resources always use the primary.
    #[arg(long, env = "ORDERLY_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,

    /// How far the replica may fall behind the primary before lists read the primary instead
    /// (as they do while the replica is unreachable).
    #[arg(long, env = "ORDERLY_DATABASE_READ_MAX_LAG", default_value = "5s", value_parser = parse_duration)]
    pub database_read_max_lag: Duration,

    /// Maximum connections per pool. SQLite uses one writer and at most one reader per CPU.
    #[arg(long, env = "ORDERLY_DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// How long a request waits for a free connection before answering 503.
    #[arg(long, env = "ORDERLY_DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_positive_duration)]
    pub database_acquire_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "ORDERLY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Apply pending migrations when the server starts.
    #[arg(long, env = "ORDERLY_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub http: HttpConfig,

    #[command(flatten)]
    pub payments: PaymentsConfig,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub redis: RedisConfig,

    #[command(flatten)]
    pub worker: WorkerConfig,

    #[command(flatten)]
    pub webhooks: WebhookConfig,

    /// Log format: `json` (one object per line), `text`, or `auto` (text on a terminal).
    #[arg(long, env = "ORDERLY_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub tracing: TracingConfig,
}

/// Trace export (OpenTelemetry).
#[derive(Debug, Clone, Args)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver (a collector, Jaeger, Tempo): spans are sent, as
    /// protobuf, to `<url>/v1/traces`. Unset: no spans are made.
    #[arg(long, env = "ORDERLY_OTLP_ENDPOINT", hide_env_values = true, value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// Share of new traces kept, 0 to 1. A request's own `traceparent` decides for its trace.
    #[arg(long, env = "ORDERLY_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub otlp_sample_ratio: f64,
}

fn parse_otlp_endpoint(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|error| format!("`{raw}` is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{raw}` must be an http or https URL without query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{raw}` is not a number from 0 to 1")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Folder for embedded-mode state: the generated signing key lives here.
    #[arg(long, env = "ORDERLY_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Ed25519 private key (PKCS#8 PEM) that signs access tokens. Required with PostgreSQL;
    /// in embedded mode one is generated in the data folder when unset.
    #[arg(long, env = "ORDERLY_JWT_PRIVATE_KEY", hide_env_values = true, conflicts_with = "jwt_private_key_file")]
    pub jwt_private_key: Option<String>,

    /// File holding the Ed25519 private key (PKCS#8 PEM), instead of ORDERLY_JWT_PRIVATE_KEY.
    #[arg(long, env = "ORDERLY_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,

    /// Retired Ed25519 public keys (SPKI PEM, concatenated) still accepted for verification
    /// during a key rotation, and published in the JWKS.
    #[arg(long, env = "ORDERLY_JWT_PREVIOUS_PUBLIC_KEYS", hide_env_values = true)]
    pub jwt_previous_public_keys: Option<String>,

    /// Threads that hash passwords. Each holds 19 MiB; more allow more concurrent logins on
    /// machines with CPUs to spare.
    #[arg(long, env = "ORDERLY_PASSWORD_HASHERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub password_hashers: u16,

    /// Lifetime of access tokens.
    #[arg(long, env = "ORDERLY_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_positive_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens (each use rotates the token).
    #[arg(long, env = "ORDERLY_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_positive_duration)]
    pub refresh_token_ttl: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PaymentsConfig {
    /// An HTTP payment provider (`POST {url}/charges`, `POST {url}/refunds`). Unset: the
    /// built-in sandbox, which accepts `pm_card_visa` and declines everything else.
    #[arg(long, env = "ORDERLY_PAYMENT_PROVIDER_URL", hide_env_values = true)]
    pub payment_provider_url: Option<String>,

    /// Deadline of one call to the provider.
    #[arg(long, env = "ORDERLY_PAYMENT_PROVIDER_TIMEOUT", default_value = "2s", value_parser = parse_positive_duration)]
    pub payment_provider_timeout: Duration,

    /// Calls per operation, first try included; timeouts, 5xx, 408 and 429 are retried with
    /// backoff.
    #[arg(long, env = "ORDERLY_PAYMENT_PROVIDER_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub payment_provider_attempts: u32,

    /// Base of the exponential backoff between attempts (full jitter, capped at 2 s).
    #[arg(long, env = "ORDERLY_PAYMENT_PROVIDER_BACKOFF", default_value = "100ms", value_parser = parse_duration)]
    pub payment_provider_backoff: Duration,

    /// Budget of one operation, retries included: past it, the client gets 503.
    #[arg(long, env = "ORDERLY_PAYMENT_PROVIDER_DEADLINE", default_value = "6s", value_parser = parse_positive_duration)]
    pub payment_provider_deadline: Duration,

    /// Consecutive failed calls that open the circuit breaker.
    #[arg(long, env = "ORDERLY_PAYMENT_CIRCUIT_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub payment_circuit_failures: u32,

    /// How long an open breaker refuses calls before letting one probe through.
    #[arg(long, env = "ORDERLY_PAYMENT_CIRCUIT_OPEN", default_value = "15s", value_parser = parse_duration)]
    pub payment_circuit_open: Duration,

    /// Most provider calls in flight at once; beyond, payments get 503 at once.
    #[arg(long, env = "ORDERLY_PAYMENT_MAX_CONCURRENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub payment_max_concurrent: u32,

    /// How long after a provider call whose outcome was never recorded (timeout, crash,
    /// database outage) the provider is asked what became of it, if no retry has settled it by
    /// then. A lookup that finds nothing is believed only once the call is also older than the
    /// provider deadline + 5 s.
    #[arg(long, env = "ORDERLY_PAYMENT_SETTLE_AFTER", default_value = "60s", value_parser = parse_positive_duration)]
    pub payment_settle_after: Duration,

    /// Sandbox only: share of calls (0.0–1.0) that fail as if the provider were down.
    #[arg(long, env = "ORDERLY_SANDBOX_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub sandbox_failure_rate: f64,

    /// Sandbox only: latency added to every call.
    #[arg(long, env = "ORDERLY_SANDBOX_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub sandbox_latency: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "ORDERLY_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Most requests served at once by this instance; beyond, 503 `overloaded` at once.
    #[arg(long, env = "ORDERLY_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// Deadline for handling one request.
    #[arg(long, env = "ORDERLY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// How long the response to an `Idempotency-Key` is kept for replay.
    #[arg(long, env = "ORDERLY_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub idempotency_ttl: Duration,

    /// `max-age` of public catalog reads, in seconds.
    #[arg(long, env = "ORDERLY_CATALOG_MAX_AGE", default_value_t = 60)]
    pub catalog_max_age: u32,

    /// How long a product representation is cached: in Redis when configured (every write, on
    /// any instance, invalidates the shared copy before it returns), else in this instance's
    /// memory (its own writes invalidate at once; the TTL bounds how long another instance's
    /// writes take to show). Default: 60s on SQLite or with Redis, 2s on PostgreSQL without.
    /// `0s` disables.
    #[arg(long, env = "ORDERLY_CATALOG_CACHE_TTL", value_parser = parse_duration)]
    pub catalog_cache_ttl: Option<Duration>,

    /// How long `GET /stats` figures are kept (and `max-age` on the response). `0s`
    /// recomputes them on every request.
    #[arg(long, env = "ORDERLY_STATS_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub stats_cache_ttl: Duration,

    /// After SIGTERM, how long to keep accepting requests while `/readyz` already fails, so
    /// load balancers stop routing here before connections are refused.
    #[arg(long, env = "ORDERLY_SHUTDOWN_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_drain_delay: Duration,

    /// How long in-flight requests may run after SIGTERM before the server stops anyway.
    #[arg(long, env = "ORDERLY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Rate limits, each `<requests>/<seconds>s`. Per instance, or global across instances when
/// `ORDERLY_REDIS_URL` is set.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Calls without valid credentials, per client IP (IPv6: per /64).
    #[arg(long, env = "ORDERLY_RATE_LIMIT_ANONYMOUS", default_value = "600/60s")]
    pub rate_limit_anonymous: Rate,

    /// Calls with an access token, per user.
    #[arg(long, env = "ORDERLY_RATE_LIMIT_USER", default_value = "1200/60s")]
    pub rate_limit_user: Rate,

    /// Calls with an API key, per key.
    #[arg(long, env = "ORDERLY_RATE_LIMIT_API_KEY", default_value = "6000/60s")]
    pub rate_limit_api_key: Rate,

    /// Calls to the credential endpoints (`/api/v1/auth/*`), per client IP.
    #[arg(long, env = "ORDERLY_RATE_LIMIT_CREDENTIALS", default_value = "20/60s")]
    pub rate_limit_credentials: Rate,

    /// Password attempts per account, whoever makes them.
    #[arg(long, env = "ORDERLY_RATE_LIMIT_ACCOUNT_LOGIN", default_value = "10/600s")]
    pub rate_limit_account_login: Rate,

    /// Proxies (addresses or CIDR ranges, comma-separated) whose `X-Forwarded-For` names the
    /// client. Requests from anyone else are limited by their own address.
    #[arg(long, env = "ORDERLY_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
}

#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Shared state for all instances: rate-limit buckets and cached representations.
    /// Unset: each instance keeps its own in memory.
    #[arg(long, env = "ORDERLY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every key this deployment writes, so several can share one Redis.
    #[arg(long, env = "ORDERLY_REDIS_KEY_PREFIX", default_value = "orderly:")]
    pub redis_key_prefix: String,

    /// Deadline of one Redis call; past it, the instance uses its own state for that request.
    #[arg(long, env = "ORDERLY_REDIS_TIMEOUT", default_value = "250ms", value_parser = parse_positive_duration)]
    pub redis_timeout: Duration,
}

/// The background work: the outbox relay, jobs, sweeps.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// RabbitMQ (`amqp://user:password@host:5672/vhost`): events are published to the topic
    /// exchange `orderly.events` and jobs announced through it. Unset: the same pipeline runs
    /// in-process.
    #[arg(long, env = "ORDERLY_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// The RabbitMQ queue of job announcements; its dead letters go to the exchange and queue
    /// `<name>.dead`. Deployments sharing a broker each need their own.
    #[arg(long, env = "ORDERLY_AMQP_JOBS_QUEUE", default_value = "orderly.jobs")]
    pub amqp_jobs_queue: String,

    /// `serve` also runs the background work in-process. `false` leaves it to `orderly worker`
    /// processes, so API instances and workers scale separately.
    #[arg(long, env = "ORDERLY_RUN_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_worker: bool,

    /// Address of `orderly worker`'s own `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "ORDERLY_WORKER_LISTEN", default_value = "127.0.0.1:8081")]
    pub worker_listen: SocketAddr,

    /// How long published events are kept (then swept). An event not yet published is kept
    /// until it is.
    #[arg(long, env = "ORDERLY_EVENT_RETENTION", default_value = "30d", value_parser = parse_positive_duration)]
    pub event_retention: Duration,

    /// Events the relay claims and publishes at once.
    #[arg(long, env = "ORDERLY_RELAY_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub relay_batch: u32,

    /// Relays each worker runs side by side: while one waits for the broker's confirms, another
    /// claims or marks its batch.
    #[arg(long, env = "ORDERLY_RELAY_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub relay_concurrency: u16,

    /// How often an idle relay looks for new events (a write in the same process wakes it at
    /// once).
    #[arg(long, env = "ORDERLY_RELAY_INTERVAL", default_value = "200ms", value_parser = parse_positive_duration)]
    pub relay_interval: Duration,

    /// How long a relay's claim on a batch holds: events a dead relay claimed are published by
    /// another this long after its claim. Longer than a batch takes to publish.
    #[arg(long, env = "ORDERLY_RELAY_LEASE", default_value = "30s", value_parser = parse_positive_duration)]
    pub relay_lease: Duration,

    /// Jobs (report exports) one worker runs at once.
    #[arg(long, env = "ORDERLY_JOB_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub job_concurrency: u16,

    /// Attempts of a job before it is `failed` for good (a worker that dies holding it counts).
    #[arg(long, env = "ORDERLY_JOB_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_max_attempts: u32,

    /// How long a worker's claim on a job holds without renewal (it renews every third of
    /// it): a dead worker's job is taken over this long after its last renewal.
    #[arg(long, env = "ORDERLY_JOB_LEASE", default_value = "30s", value_parser = parse_positive_duration)]
    pub job_lease: Duration,

    /// How often an idle worker looks for due jobs (an announcement wakes it at once).
    #[arg(long, env = "ORDERLY_JOB_POLL_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub job_poll_interval: Duration,

    /// Delay before the first retry of a failed job; each further retry waits twice as long
    /// (up to an hour), half of it random.
    #[arg(long, env = "ORDERLY_JOB_RETRY_BACKOFF", default_value = "5s", value_parser = parse_positive_duration)]
    pub job_retry_backoff: Duration,

    /// How long a report is kept once finished (then deleted, CSV and all).
    #[arg(long, env = "ORDERLY_REPORT_TTL", default_value = "7d", value_parser = parse_positive_duration)]
    pub report_ttl: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Hosts and CIDR ranges (comma-separated) webhooks may reach although private or
    /// loopback, over `http` too: a receiver inside the network, or a test's.
    #[arg(long, env = "ORDERLY_WEBHOOK_ALLOWED_TARGETS", default_value = "")]
    pub webhook_allowed_targets: AllowList,

    /// The waits before each retry of a failed delivery (±20 %), comma-separated; a delivery
    /// whose retries are spent has failed.
    #[arg(long, env = "ORDERLY_WEBHOOK_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = parse_schedule)]
    pub webhook_retry_schedule: Schedule,

    /// How long one delivery attempt may take, connecting and answering.
    #[arg(long, env = "ORDERLY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub webhook_timeout: Duration,

    /// An endpoint with no successful delivery for this long is disabled once a delivery of
    /// it has spent its retries.
    #[arg(long, env = "ORDERLY_WEBHOOK_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub webhook_disable_after: Duration,

    /// How long a rotated-out secret keeps signing deliveries beside the new one.
    #[arg(long, env = "ORDERLY_WEBHOOK_SECRET_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub webhook_secret_overlap: Duration,

    /// Delivery attempts one worker makes at once.
    #[arg(long, env = "ORDERLY_WEBHOOK_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub webhook_concurrency: u16,

    /// Delivery attempts one worker makes at once to one endpoint, so a slow endpoint holds
    /// only its own.
    #[arg(long, env = "ORDERLY_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub webhook_endpoint_concurrency: u16,

    /// How often an idle worker looks for due deliveries (new events in the same process
    /// wake it at once).
    #[arg(long, env = "ORDERLY_WEBHOOK_POLL_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub webhook_poll_interval: Duration,
}

/// The waits of a retry schedule, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

/// Parses `5s,5m,30m`: at most 20 waits (none is fine: no retries).
pub fn parse_schedule(raw: &str) -> Result<Schedule, String> {
    let waits: Vec<Duration> =
        raw.split(',').map(str::trim).filter(|w| !w.is_empty()).map(parse_duration).collect::<Result<_, _>>()?;
    if waits.len() > 20 {
        return Err(format!("`{raw}` has {} waits; at most 20", waits.len()));
    }
    Ok(Schedule(waits))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// [`parse_duration`] for a setting that has no meaning at zero (a lifetime, a timeout).
pub fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        Duration::ZERO => Err(format!("`{raw}` is zero; it must be longer")),
        duration => Ok(duration),
    }
}

/// Parses `500ms`, `10s`, `15m`, `24h`, `30d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("`{raw}` is not a duration like 500ms, 10s, 15m, 24h or 30d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{raw}` has no unit; use ms, s, m, h or d")),
    };
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(|| format!("`{raw}` is too large"))
}

/// Parses a share between 0.0 and 1.0.
fn parse_share(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("`{raw}` is not a number from 0.0 to 1.0")),
    }
}

/// A setting that failed validation after parsing.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self { setting, reason: reason.into() }
    }
}

/// Every flag of every command that is also read from a variable, with that variable's name.
fn settings() -> Vec<(String, clap::Arg)> {
    fn gather(command: &clap::Command, settings: &mut Vec<(String, clap::Arg)>) {
        let named =
            command.get_arguments().filter_map(|arg| Some((arg.get_env()?.to_string_lossy().into(), arg.clone())));
        settings.extend(named);
        command.get_subcommands().for_each(|subcommand| gather(subcommand, settings));
    }
    let mut settings = Vec::new();
    gather(&<Cli as clap::CommandFactory>::command(), &mut settings);
    settings
}

/// Every variable a setting is read from: those of the flags, and the admin password
/// `orderly admin create-user` reads.
fn known_settings() -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = settings().into_iter().map(|(name, _)| name).collect();
    names.insert("ORDERLY_ADMIN_PASSWORD".to_owned());
    names
}

/// Loads `ORDERLY_*` lines from an env-style file into the environment, without overriding
/// variables that are already set; a name no setting reads is refused (a misspelt setting
/// would otherwise be ignored). Must run before any thread starts.
pub fn load_config_file(path: &std::path::Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new("ORDERLY_CONFIG", format!("cannot read {}: {error}", path.display())))?;
    let known = known_settings();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            ConfigError::new("ORDERLY_CONFIG", format!("{} line {}: expected KEY=value", path.display(), number + 1))
        })?;
        let key = key.trim().trim_start_matches("export ").trim();
        if !known.contains(key) {
            return Err(ConfigError::new(
                "ORDERLY_CONFIG",
                format!("{} line {}: `{key}` is not an ORDERLY_ setting", path.display(), number + 1),
            ));
        }
        let value = value.trim().trim_matches('"');
        if std::env::var_os(key).is_none() {
            // SAFETY: called from `main` before the runtime or any other thread exists.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn trace_settings_take_only_a_base_url_and_a_ratio() {
        assert_eq!(parse_otlp_endpoint("http://collector:4318/").as_deref(), Ok("http://collector:4318"));
        assert_eq!(parse_otlp_endpoint("https://tempo.example/otlp").as_deref(), Ok("https://tempo.example/otlp"));
        for refused in ["collector:4318", "ftp://collector", "http://collector/?token=1", "http://c/#x", ""] {
            assert!(parse_otlp_endpoint(refused).is_err(), "{refused}");
        }
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!((parse_ratio("0"), parse_ratio("1")), (Ok(0.0), Ok(1.0)));
        for refused in ["-0.1", "1.5", "NaN", "half", ""] {
            assert!(parse_ratio(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10y").is_err());
    }

    /// README's configuration table lists every setting, with the default the binary has.
    #[test]
    fn the_readme_documents_every_setting_and_its_default() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let row = |name: &str| readme.lines().find(|line| line.starts_with(&format!("| `{name}`"))).map(str::to_owned);
        let mut drift = Vec::new();
        for (name, arg) in settings() {
            if let Some(base) = name.strip_suffix("_FILE") {
                if !readme.contains(&format!("`{base}` / `_FILE`")) {
                    drift.push(format!("{name} is not named"));
                }
                continue;
            }
            let Some(row) = row(&name) else {
                drift.push(format!("{name} has no row"));
                continue;
            };
            // An empty default is an unset setting.
            if let Some(default) = arg.get_default_values().first().filter(|default| !default.is_empty()) {
                let default = format!("`{}`", default.to_string_lossy());
                if !row.split('|').nth(2).unwrap_or_default().contains(&default) {
                    drift.push(format!("{name} defaults to {default}, not as in: {row}"));
                }
            }
        }
        if row("RUST_LOG").is_none() {
            drift.push("RUST_LOG has no row".into());
        }
        assert!(drift.is_empty(), "README's configuration table drifted:\n{}", drift.join("\n"));
    }

    #[test]
    fn a_config_file_may_name_only_settings_that_exist() {
        let known = known_settings();
        for name in ["ORDERLY_LISTEN", "ORDERLY_DATABASE_URL", "ORDERLY_ACCESS_TOKEN_TTL", "ORDERLY_ADMIN_PASSWORD"] {
            assert!(known.contains(name), "{name}");
        }
        let path = std::env::temp_dir().join(format!("orderly-config-{}.env", std::process::id()));
        std::fs::write(&path, "# a misspelt setting\nORDERLY_LISTN=127.0.0.1:9\n").unwrap();
        let refused = load_config_file(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert_eq!(refused.setting, "ORDERLY_CONFIG");
        assert!(refused.reason.contains("line 2: `ORDERLY_LISTN` is not an ORDERLY_ setting"), "{}", refused.reason);
        assert!(std::env::var_os("ORDERLY_LISTN").is_none(), "nothing of the file was loaded");
    }

    #[test]
    fn lifetimes_and_timeouts_are_longer_than_zero() {
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        for zero in ["0s", "0ms", "0d"] {
            assert!(parse_positive_duration(zero).is_err(), "{zero}");
        }
        let settings = ["--access-token-ttl", "--refresh-token-ttl", "--request-timeout", "--idempotency-ttl"];
        for setting in settings {
            let parsed = Cli::try_parse_from(["orderly", "serve", setting, "0s"]);
            assert!(parsed.is_err(), "{setting} 0s is refused");
        }
    }
}
