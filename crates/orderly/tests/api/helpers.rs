//! `TestApp`: the real application on a random port, on a fresh SQLite file or a fresh
//! PostgreSQL database, with typed helpers for the calls most tests need.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use orderly::app::Application;
use orderly::config::{Cli, Command, ServeConfig};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio_postgres::types::{IsNull, ToSql, Type};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per backend for each named scenario.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

/// As [`on_every_backend!`], for scenarios that start their own app: each gets the backend.
#[macro_export]
macro_rules! on_every_backend_with_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _database: std::sync::Arc<TestDatabase>,
    /// The `serve` arguments it started with, for siblings.
    args: Vec<String>,
    /// The `orderly` process serving it, for scenarios that kill it; `None` when it runs in
    /// the test's own runtime.
    process: Option<std::process::Child>,
    /// Where that process writes its log.
    process_log: Option<PathBuf>,
}

pub struct Credentials {
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestApp {
    /// Starts the app; `None` (with the reason printed) when PostgreSQL is not configured
    /// outside CI. Under `CI=true` a missing service fails the test.
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the app with extra `serve` flags.
    pub async fn spawn_with(backend: Backend, extra_args: &[&str]) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        Some(Self::spawn_on(database, backend, extra_args).await)
    }

    /// Starts the app on a fresh database of `pair`'s primary, reading lists from its replica
    /// (`--database-read-url`), with extra `serve` flags.
    pub async fn spawn_on_replica_pair(pair: &ReplicaPair, extra_args: &[&str]) -> Self {
        let (database, read_url) = TestDatabase::on_replica_pair(pair).await;
        let read_url = format!("--database-read-url={read_url}");
        let args: Vec<&str> = std::iter::once(read_url.as_str()).chain(extra_args.iter().copied()).collect();
        Self::spawn_on(database, Backend::Postgres, &args).await
    }

    /// Two instances of one deployment started with `args`: one database, one signing key.
    pub async fn spawn_pair(backend: Backend, args: &[String]) -> Option<(Self, Self)> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let first = Self::spawn_with(backend, &args).await?;
        let second = first.spawn_sibling(&[]).await;
        Some((first, second))
    }

    /// Another instance of the same deployment: same database, same signing key, same
    /// settings, then `extra_args`.
    pub async fn spawn_sibling(&self, extra_args: &[&str]) -> Self {
        let mut args = self.args.clone();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::start(std::sync::Arc::clone(&self._database), args).await
    }

    /// Starts the app on a database migrated only up to `migration` and then filled by
    /// `prepare`: starting applies the later migrations to that data, as an upgrade does.
    pub async fn spawn_after_migration(
        backend: Backend,
        migration: u32,
        prepare: impl AsyncFnOnce(&orderly::db::Database),
        extra_args: &[&str],
    ) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        let config = orderly::config::DatabaseConfig {
            database_url: database.url.clone(),
            database_read_url: None,
            database_read_max_lag: std::time::Duration::from_secs(5),
            database_max_connections: 2,
            database_acquire_timeout: std::time::Duration::from_secs(5),
        };
        let earlier = orderly::db::Database::connect(&config).await.expect("connect to the test database");
        earlier.migrate_up_to(Some(i64::from(migration))).await.expect("earlier migrations apply");
        prepare(&earlier).await;
        // Its connections close (and its SQLite threads end) once it is dropped.
        drop(earlier);
        Some(Self::spawn_on(database, backend, extra_args).await)
    }

    /// Starts the app on a fresh database loaded from `dump` (SQL text a release's database was
    /// dumped to), as an upgrade of that release would.
    pub async fn spawn_on_dump(backend: Backend, dump: &str) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        match backend {
            Backend::Sqlite => {
                let path = database.url.strip_prefix("sqlite://").unwrap().to_owned();
                std::fs::create_dir_all(&database.data_dir).unwrap();
                let dump = dump.to_owned();
                tokio::task::spawn_blocking(move || {
                    rusqlite::Connection::open(path).unwrap().execute_batch(&dump).expect("the dump loads")
                })
                .await
                .unwrap();
            }
            // A connection of its own: the dump empties its `search_path`.
            Backend::Postgres => connect_admin(&database.url).await.batch_execute(dump).await.expect("the dump loads"),
        }
        Some(Self::spawn_on(database, backend, &[]).await)
    }

    /// Starts the `orderly` binary as a process of its own, with extra `serve` flags, so that a
    /// scenario can kill it as a crash would ([`Self::kill`]) and start it again on the same
    /// database ([`Self::restart`]).
    pub async fn spawn_process(backend: Backend, extra_args: &[&str]) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        let args = serve_args(&database, backend, extra_args);
        Some(Self::start_process(std::sync::Arc::new(database), args).await)
    }

    /// As [`Self::spawn_with`], on a fresh database of the PostgreSQL server at `server_url`.
    pub async fn spawn_on_server(server_url: &str, extra_args: &[&str]) -> Self {
        let database = TestDatabase::on_server(server_url).await;
        Self::spawn_on(database, Backend::Postgres, extra_args).await
    }

    /// The log lines the process has written so far, each parsed as JSON.
    pub fn process_log(&self) -> Vec<Value> {
        let path = self.process_log.as_ref().expect("only an app run as a process has a log of its own");
        let log = std::fs::read_to_string(path).unwrap_or_default();
        log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Kills the process with SIGKILL: no shutdown, nothing flushed or finished.
    pub fn kill(&mut self) {
        let mut process = self.process.take().expect("only an app run as a process can be killed");
        process.kill().expect("SIGKILL the app");
        process.wait().expect("reap the app");
    }

    /// Sends the process SIGTERM and waits up to `timeout` for it to exit; whether it did,
    /// successfully.
    pub async fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        let mut process = self.process.take().expect("only an app run as a process can be terminated");
        let _ = std::process::Command::new("kill").args(["-TERM", &process.id().to_string()]).status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = process.try_wait().unwrap() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = process.kill();
                let _ = process.wait();
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Runs SQL statements on the app's database, from a connection of the test's own.
    pub async fn execute_sql(&self, sql: &str) {
        match self._database.backend {
            Backend::Postgres => connect_admin(&self._database.url).await.batch_execute(sql).await.unwrap(),
            Backend::Sqlite => {
                let (url, sql) = (self._database.url.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || open_sqlite(&url).execute_batch(&sql).unwrap()).await.unwrap();
            }
        }
    }

    /// Starts `orderly worker` as a process of its own, with this app's settings (its
    /// database, its key) then `extra_args`; its probes and metrics are at its `address`.
    pub async fn spawn_worker_process(&self, extra_args: &[&str]) -> Self {
        let mut args = self.args.clone();
        args[1] = "worker".to_owned();
        args.push("--worker-listen=127.0.0.1:0".to_owned());
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::start_process(std::sync::Arc::clone(&self._database), args).await
    }

    /// Starts the process again, after [`Self::kill`], on the same database with the same
    /// settings (on another port).
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "kill the app before restarting it");
        let restarted = Self::start_process(std::sync::Arc::clone(&self._database), self.args.clone()).await;
        *self = restarted;
    }

    async fn start_process(database: std::sync::Arc<TestDatabase>, args: Vec<String>) -> Self {
        std::fs::create_dir_all(&database.data_dir).unwrap();
        let log_path = database.data_dir.join(format!("process-{}.log", Uuid::now_v7().simple()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"));
        for (name, _) in std::env::vars() {
            if name.starts_with("ORDERLY_") {
                command.env_remove(name);
            }
        }
        let process = command
            .args(&args[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the orderly binary");
        let mut app = Self {
            address: String::new(),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            shutdown: None,
            server: None,
            _database: database,
            args,
            process: Some(process),
            process_log: Some(log_path.clone()),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let listening = log.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).find_map(|entry| {
                entry["address"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| entry["fields"]["address"].as_str().map(str::to_owned))
            });
            if let Some(address) = listening {
                app.address = format!("http://{address}");
                return app;
            }
            let exited = app.process.as_mut().unwrap().try_wait().unwrap();
            assert!(exited.is_none() && std::time::Instant::now() < deadline, "the app did not start: {log}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn spawn_on(database: TestDatabase, backend: Backend, extra_args: &[&str]) -> Self {
        let args = serve_args(&database, backend, extra_args);
        Self::start(std::sync::Arc::new(database), args).await
    }

    async fn start(database: std::sync::Arc<TestDatabase>, args: Vec<String>) -> Self {
        let Command::Serve(config) = Cli::try_parse_from(&args).expect("test configuration parses").command else {
            unreachable!("the serve command was given")
        };
        let config: ServeConfig = *config;
        let application = Application::build(config).await.expect("the application starts");
        let address = format!("http://127.0.0.1:{}", application.port());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self {
            address,
            client,
            shutdown: Some(shutdown),
            server: Some(server),
            _database: database,
            args,
            process: None,
            process_log: None,
        }
    }

    /// Signals the server to shut down, as SIGTERM does.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Whether the server stopped within `timeout`.
    pub async fn wait_stopped(&mut self, timeout: std::time::Duration) -> bool {
        match self.server.take() {
            Some(server) => matches!(tokio::time::timeout(timeout, server).await, Ok(Ok(Ok(())))),
            None => true,
        }
    }

    /// The URL of this app's database, for tests that need to reach it from outside the app.
    /// PostgreSQL's count of transactions committed in this app's database (as last reported
    /// by its backends).
    pub async fn database_commits(&self) -> i64 {
        let (admin_url, name) = self._database.drop_from.clone().expect("a PostgreSQL test database");
        let client = connect_admin(&admin_url).await;
        let row =
            client.query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", &[&name]).await.unwrap();
        row.get(0)
    }

    pub fn backend(&self) -> Backend {
        self._database.backend
    }

    pub fn database_url(&self) -> &str {
        &self._database.url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.request(Method::GET, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn send_json(&self, method: Method, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.request(method, path).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send_json(Method::POST, path, token, body).await
    }

    /// A unique email for this test run.
    pub fn unique_email(&self, label: &str) -> String {
        format!(
            "{label}-{}-{}@example.com",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &Uuid::now_v7().simple().to_string()[20..]
        )
    }

    pub async fn register(&self, email: &str, password: &str) -> Value {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                None,
                &json!({"email": email, "password": password, "name": "Test User"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "registration failed");
        response.json().await.unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Value {
        let response = self
            .request(Method::POST, "/api/v1/auth/token")
            .form(&[("grant_type", "password"), ("username", email), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login failed");
        response.json().await.unwrap()
    }

    /// Registers and logs in a new customer.
    pub async fn customer(&self) -> Credentials {
        let email = self.unique_email("customer");
        let password = "customer-secret-1".to_owned();
        let user = self.register(&email, &password).await;
        let tokens = self.login(&email, &password).await;
        Credentials {
            user_id: user["id"].as_str().unwrap().to_owned(),
            email,
            password,
            access_token: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh_token: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// A new customer promoted to admin through the database, then logged in.
    pub async fn admin(&self) -> Credentials {
        let customer = self.customer().await;
        self._database.promote_to_admin(&customer.user_id).await;
        let tokens = self.login(&customer.email, &customer.password).await;
        Credentials {
            access_token: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh_token: tokens["refresh_token"].as_str().unwrap().to_owned(),
            ..customer
        }
    }

    /// Places an order as `customer` for `(product id, quantity)` lines; returns the response.
    pub async fn place_order(&self, customer: &Credentials, lines: &[(&str, i64)]) -> Response {
        let items: Vec<Value> =
            lines.iter().map(|(id, quantity)| json!({"product_id": id, "quantity": quantity})).collect();
        self.post_json("/api/v1/orders", Some(&customer.access_token), &json!({ "items": items })).await
    }

    /// The stock of a product, as the public catalog shows it.
    pub async fn stock_of(&self, product_id: &str) -> i64 {
        let product: Value = self.get(&format!("/api/v1/products/{product_id}"), None).await.json().await.unwrap();
        product["stock"].as_i64().unwrap()
    }

    /// Takes SQLite's write lock from another connection, as another process would, and holds
    /// it until the returned connection is dropped: the app's writes wait, then fail.
    pub async fn hold_sqlite_write_lock(&self) -> SqliteWriteLock {
        assert_eq!(self._database.backend, Backend::Sqlite);
        let url = self._database.url.clone();
        let connection = tokio::task::spawn_blocking(move || {
            let connection = open_sqlite(&url);
            connection.execute_batch("BEGIN EXCLUSIVE").unwrap();
            connection
        })
        .await
        .unwrap();
        SqliteWriteLock { _connection: connection }
    }

    /// Sets an order's status directly in the database (for states no endpoint reaches yet).
    pub async fn force_order_status(&self, order_id: &str, status: &str) {
        self._database.execute("UPDATE orders SET status = ", status, " WHERE id = ", order_id).await;
    }

    /// Creates a product as `admin`; `overrides` replace fields of a valid default.
    pub async fn create_product(&self, admin: &Credentials, overrides: Value) -> Value {
        let mut body = json!({
            "sku": format!("SKU-{}", Uuid::now_v7().simple()),
            "name": "Test product",
            "description": "A product for tests",
            "unit_price": 1000,
            "currency": "USD",
            "stock": 10,
        });
        for (key, value) in overrides.as_object().unwrap() {
            body[key] = value.clone();
        }
        let response = self.post_json("/api/v1/products", Some(&admin.access_token), &body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "product creation failed: {}",
            response.text().await.unwrap()
        );
        response.json().await.unwrap()
    }
}

/// The `orderly serve` arguments of a test app on `database`: a random port, JSON logs, quotas
/// out of reach, then `extra_args` (later flags win).
fn serve_args(database: &TestDatabase, backend: Backend, extra_args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["orderly", "serve", "--listen", "127.0.0.1:0", "--log-format", "json"].iter().map(|s| s.to_string()).collect();
    args.extend(["--database-url".into(), database.url.clone()]);
    args.extend(["--data-dir".into(), database.data_dir.display().to_string()]);
    if backend == Backend::Postgres {
        args.push(format!("--jwt-private-key={}", generate_private_key_pem()));
    }
    // Every test client is 127.0.0.1: quotas out of reach unless a test sets its own
    // (later flags win).
    for tier in ["anonymous", "user", "api-key", "credentials", "account-login"] {
        args.push(format!("--rate-limit-{tier}=1000000/1s"));
    }
    args.extend(extra_args.iter().map(|s| s.to_string()));
    args
}

/// Polls until `done` holds, for at most 10 s.
pub async fn eventually(done: impl AsyncFnMut() -> bool) -> bool {
    eventually_within(std::time::Duration::from_secs(10), done).await
}

/// Polls until `done` holds, for at most `timeout`.
pub async fn eventually_within(timeout: std::time::Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// One scrape of `/metrics`: each series (name with its labels, as rendered) and its value.
pub async fn scrape_metrics(app: &TestApp) -> std::collections::HashMap<String, f64> {
    let response = app.get("/metrics", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a series and its value");
            (series.to_owned(), value.parse().expect("a numeric value"))
        })
        .collect()
}

/// `INSERT INTO table (columns) VALUES (values)` on `db`, for tests that write rows as an
/// earlier release did.
pub fn insert_row(
    db: &orderly::db::Database,
    table: &str,
    columns: &[&str],
    values: Vec<TestValue>,
) -> impl Future<Output = Result<u64, orderly::db::DbError>> + use<> {
    assert_eq!(columns.len(), values.len(), "one value per column");
    let names: Vec<String> = columns.iter().map(|column| format!("\"{column}\"")).collect();
    let placeholders: Vec<String> = (1..=values.len()).map(|n| format!("${n}")).collect();
    let sql = format!("INSERT INTO \"{table}\" ({}) VALUES ({})", names.join(", "), placeholders.join(", "));
    let db = db.clone();
    async move {
        db.write()
            .run(async move |conn| {
                let params: Vec<&dyn orderly::db::Param> =
                    values.iter().map(|value| value as &dyn orderly::db::Param).collect();
                conn.execute(&sql, &params).await
            })
            .await
    }
}

/// A value [`insert_row`] binds, stored as the application stores its type; `Null` is NULL
/// in any column.
#[derive(Debug, Clone)]
pub enum TestValue {
    Null,
    Uuid(Uuid),
    I64(i64),
    /// For `integer` columns (PostgreSQL checks the width).
    I32(i32),
    Text(String),
    Bool(bool),
    Time(chrono::DateTime<chrono::Utc>),
}

impl From<Uuid> for TestValue {
    fn from(value: Uuid) -> Self {
        Self::Uuid(value)
    }
}

impl From<i64> for TestValue {
    fn from(value: i64) -> Self {
        Self::I64(value)
    }
}

impl From<i32> for TestValue {
    fn from(value: i32) -> Self {
        Self::I32(value)
    }
}

impl From<String> for TestValue {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<&str> for TestValue {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<bool> for TestValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<chrono::DateTime<chrono::Utc>> for TestValue {
    fn from(value: chrono::DateTime<chrono::Utc>) -> Self {
        Self::Time(value)
    }
}

impl<T: Into<TestValue>> From<Option<T>> for TestValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

impl ToSql for TestValue {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Uuid(value) => value.to_sql(ty, out),
            Self::I64(value) => value.to_sql(ty, out),
            Self::I32(value) => value.to_sql(ty, out),
            Self::Text(value) => value.to_sql(ty, out),
            Self::Bool(value) => value.to_sql(ty, out),
            Self::Time(value) => value.to_sql(ty, out),
        }
    }

    /// Every variant checks the column type itself, in `to_sql_checked`.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Uuid(value) => value.to_sql_checked(ty, out),
            Self::I64(value) => value.to_sql_checked(ty, out),
            Self::I32(value) => value.to_sql_checked(ty, out),
            Self::Text(value) => value.to_sql_checked(ty, out),
            Self::Bool(value) => value.to_sql_checked(ty, out),
            Self::Time(value) => value.to_sql_checked(ty, out),
        }
    }
}

impl orderly::db::Param for TestValue {
    fn to_sqlite(&self) -> rusqlite::types::ToSqlOutput<'_> {
        match self {
            Self::Null => rusqlite::types::ToSqlOutput::from(rusqlite::types::Null),
            Self::Uuid(value) => value.to_sqlite(),
            Self::I64(value) => value.to_sqlite(),
            Self::I32(value) => rusqlite::types::ToSqlOutput::from(*value),
            Self::Text(value) => value.to_sqlite(),
            Self::Bool(value) => value.to_sqlite(),
            Self::Time(value) => value.to_sqlite(),
        }
    }
}

/// Inserts a customer as an earlier release stored one (no usable password), for upgrade
/// scenarios.
pub async fn insert_user_row(db: &orderly::db::Database, user_id: Uuid, at: chrono::DateTime<chrono::Utc>) {
    let columns = ["id", "email", "name", "role", "password_hash", "version", "created_at", "updated_at"];
    let user = vec![
        user_id.into(),
        format!("{}@example.com", user_id.simple()).into(),
        "Earlier".into(),
        "customer".into(),
        "not-a-hash".into(),
        1i64.into(),
        at.into(),
        at.into(),
    ];
    insert_row(db, "users", &columns, user).await.unwrap();
}

/// SQLite's write lock, taken by a connection of the test's own; released when dropped.
pub struct SqliteWriteLock {
    _connection: rusqlite::Connection,
}

/// A transaction of another client of the app's database, holding whatever its statements
/// lock until [`Self::rollback`] (or until it is dropped).
pub enum OutsideTransaction {
    Postgres(tokio_postgres::Client),
    Sqlite(Option<rusqlite::Connection>),
}

impl OutsideTransaction {
    /// Connects to the database at `url` and begins a transaction.
    pub async fn begin(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            let mut transaction = Self::Sqlite(Some(open_sqlite(url)));
            transaction.execute("BEGIN").await;
            transaction
        } else {
            let client = connect_postgres(url).await.expect("connect to the test database");
            client.batch_execute("BEGIN").await.unwrap();
            Self::Postgres(client)
        }
    }

    /// Runs `sql` (no parameters) in the transaction.
    pub async fn execute(&mut self, sql: &str) {
        match self {
            Self::Postgres(client) => client.batch_execute(sql).await.unwrap(),
            Self::Sqlite(held) => {
                let connection = held.take().expect("the connection is back after each statement");
                let sql = sql.to_owned();
                let connection = tokio::task::spawn_blocking(move || {
                    connection.execute_batch(&sql).unwrap();
                    connection
                })
                .await
                .unwrap();
                *held = Some(connection);
            }
        }
    }

    pub async fn rollback(mut self) {
        self.execute("ROLLBACK").await;
    }
}

/// A connection of the test's own to the SQLite database at `url` (`sqlite://path`), waiting
/// up to 5 s for a lock as the app's connections do.
fn open_sqlite(url: &str) -> rusqlite::Connection {
    let path = url.strip_prefix("sqlite://").expect("a sqlite:// URL");
    let connection = rusqlite::Connection::open(path).expect("open the SQLite test database");
    connection.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    connection
}

/// Asserts a problem response and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status for expected `{code}`");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "problem body: {body}");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["request_id"], request_id.as_str());
    for member in ["type", "title", "detail", "instance"] {
        assert!(body[member].is_string(), "problem lacks `{member}`: {body}");
    }
    body
}

/// The offending fields of a 422 problem, sorted.
pub fn error_fields(problem: &Value) -> Vec<String> {
    let mut fields: Vec<String> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    fields.sort();
    fields
}

fn generate_private_key_pem() -> String {
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()))
}

/// A fresh PostgreSQL database of its own for a test that runs the binary on it; dropped with
/// the returned guard. `None` (skipped) off CI without `ORDERLY_TEST_DATABASE_URL`.
pub async fn fresh_postgres_database() -> Option<PostgresDatabase> {
    TestDatabase::create(Backend::Postgres).await.map(PostgresDatabase)
}

pub struct PostgresDatabase(TestDatabase);

impl PostgresDatabase {
    pub fn url(&self) -> &str {
        &self.0.url
    }
}

/// The one bigint that `sql` selects from the PostgreSQL database at `url`.
pub async fn postgres_query_i64(url: &str, sql: &str) -> i64 {
    connect_admin(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// A fresh database (and data folder) for one test, removed when the test ends.
struct TestDatabase {
    url: String,
    data_dir: PathBuf,
    backend: Backend,
    /// The server URL and name to drop it by, when the test owns it on a shared server.
    drop_from: Option<(String, String)>,
}

impl TestDatabase {
    async fn create(backend: Backend) -> Option<Self> {
        let data_dir = std::env::temp_dir().join(format!("orderly-test-{}", Uuid::now_v7().simple()));
        match backend {
            Backend::Sqlite => Some(Self {
                url: format!("sqlite://{}/orderly.db", data_dir.display()),
                data_dir,
                backend,
                drop_from: None,
            }),
            Backend::Postgres => {
                let admin_url = postgres_url()?;
                let name = create_postgres_database(&admin_url).await;
                let url = with_database(&admin_url, &name);
                Some(Self { url, data_dir, backend, drop_from: Some((admin_url, name)) })
            }
        }
    }

    /// A fresh database on `pair`'s primary, once the replica has it too; it goes with the pair.
    async fn on_replica_pair(pair: &ReplicaPair) -> (Self, String) {
        let name = create_postgres_database(&pair.primary_url).await;
        pair.wait_caught_up().await;
        let database = Self {
            url: with_database(&pair.primary_url, &name),
            data_dir: std::env::temp_dir().join(format!("orderly-test-{}", Uuid::now_v7().simple())),
            backend: Backend::Postgres,
            drop_from: None,
        };
        (database, with_database(&pair.replica_url, &name))
    }

    /// A fresh database on the PostgreSQL server at `server_url`; dropped with the server.
    async fn on_server(server_url: &str) -> Self {
        let name = create_postgres_database(server_url).await;
        Self {
            url: with_database(server_url, &name),
            data_dir: std::env::temp_dir().join(format!("orderly-test-{}", Uuid::now_v7().simple())),
            backend: Backend::Postgres,
            drop_from: None,
        }
    }

    /// Runs `UPDATE … SET column = <value> WHERE id = <id>` (the statement given in pieces so
    /// values are bound, never spliced).
    async fn execute(&self, set: &str, value: &str, filter: &str, id: &str) {
        let id = Uuid::parse_str(id).unwrap();
        match self.backend {
            Backend::Postgres => {
                let connection = connect_admin(&self.url).await;
                let sql = format!("{set}$1{filter}$2");
                connection.execute(&sql, &[&value, &id]).await.unwrap();
            }
            Backend::Sqlite => {
                let (url, value) = (self.url.clone(), value.to_owned());
                let sql = format!("{set}?1{filter}?2");
                tokio::task::spawn_blocking(move || {
                    let id = orderly::db::Param::to_sqlite(&id);
                    open_sqlite(&url).execute(&sql, rusqlite::params![value, id]).unwrap();
                })
                .await
                .unwrap();
            }
        }
    }

    async fn promote_to_admin(&self, user_id: &str) {
        let id = Uuid::parse_str(user_id).unwrap();
        match self.backend {
            Backend::Postgres => {
                let connection = connect_admin(&self.url).await;
                connection.execute("UPDATE users SET role = 'admin' WHERE id = $1", &[&id]).await.unwrap();
            }
            Backend::Sqlite => {
                let url = self.url.clone();
                tokio::task::spawn_blocking(move || {
                    let id = orderly::db::Param::to_sqlite(&id);
                    open_sqlite(&url)
                        .execute("UPDATE users SET role = 'admin' WHERE id = ?1", rusqlite::params![id])
                        .unwrap();
                })
                .await
                .unwrap();
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some((admin_url, name)) = self.drop_from.take() {
            // Drop runs outside any runtime we may block; use a private one on its own thread.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    let connection = connect_admin(&admin_url).await;
                    let _ = connection.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                });
            })
            .join();
        }
    }
}

/// The Redis of the suites that need one (`ORDERLY_TEST_REDIS_URL`); `None`, with the reason
/// printed, when unset outside CI. Under `CI=true` a missing Redis fails the test.
pub fn redis_url() -> Option<String> {
    match std::env::var("ORDERLY_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => {
            panic!("CI=true but ORDERLY_TEST_REDIS_URL is not set: the Redis suite must run in CI")
        }
        _ => {
            eprintln!("skipping a Redis scenario: ORDERLY_TEST_REDIS_URL is not set");
            None
        }
    }
}

/// Flags that point an app at `redis_url` under `prefix`: apps given the same prefix share
/// their state, as instances of one deployment do, and no other test's keys are touched.
pub fn redis_flags(redis_url: &str, prefix: &str) -> Vec<String> {
    vec![format!("--redis-url={redis_url}"), format!("--redis-key-prefix={prefix}")]
}

/// A Redis key prefix no other test uses.
pub fn unique_redis_prefix() -> String {
    format!("orderly-test-{}:", Uuid::now_v7().simple())
}

/// A `redis-server` of a test's own on a free port, for scenarios that stop and restart Redis
/// without disturbing the shared one. Killed when dropped.
pub struct PrivateRedis {
    port: u16,
    server: Option<std::process::Child>,
}

impl PrivateRedis {
    /// `None`, with the reason printed, when `redis-server` cannot be run outside CI; under
    /// `CI=true` that fails the test.
    pub fn start() -> Option<Self> {
        let mut redis = Self { port: free_port(), server: None };
        match redis.spawn() {
            Ok(()) => Some(redis),
            Err(error) if in_ci() => {
                panic!("CI=true but redis-server cannot be started: {error}")
            }
            Err(error) => {
                eprintln!("skipping a Redis outage scenario: redis-server cannot be started: {error}");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("redis-server restarts");
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let server = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        self.server = Some(server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other("redis-server did not start listening within 10 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn postgres_url() -> Option<String> {
    match std::env::var("ORDERLY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => {
            panic!("CI=true but ORDERLY_TEST_DATABASE_URL is not set: the PostgreSQL suite must run in CI")
        }
        _ => {
            eprintln!("skipping the PostgreSQL variant: ORDERLY_TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// Creates a uniquely named database on the server at `admin_url`; returns its name.
async fn create_postgres_database(admin_url: &str) -> String {
    let name = format!("orderly_test_{}", Uuid::now_v7().simple());
    let connection = connect_admin(admin_url).await;
    connection.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
    name
}

async fn connect_admin(url: &str) -> tokio_postgres::Client {
    connect_postgres(url).await.expect("connect to ORDERLY_TEST_DATABASE_URL")
}

/// A client of the PostgreSQL database at `url`; its connection runs on a task of its own
/// until the client is dropped.
pub async fn connect_postgres(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..].find('/').map(|i| i + authority_end).unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..path_start])
}

/// A private PostgreSQL primary and its streaming replica on free ports, started by
/// `deploy/pg_replica.sh`, for scenarios that hold the replica back or stop it. Removed when
/// dropped.
pub struct ReplicaPair {
    dir: PathBuf,
    pub primary_url: String,
    pub replica_url: String,
}

impl ReplicaPair {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/pg_replica.sh");

    /// `None`, with the reason printed, when the pair cannot be started outside CI (no
    /// PostgreSQL server programs); under `CI=true` that fails the test.
    pub fn start() -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("orderly-replica-{}", Uuid::now_v7().simple()));
        let [primary_port, replica_port] = [free_port(), free_port()];
        start_private_servers(&dir, &[primary_port, replica_port], "the PostgreSQL replica pair", "a read-replica")?;
        Some(Self {
            dir,
            primary_url: format!("postgres://postgres@127.0.0.1:{primary_port}/postgres"),
            replica_url: format!("postgres://postgres@127.0.0.1:{replica_port}/postgres"),
        })
    }

    /// Stops replaying WAL on the replica and waits until it has stopped: from then on it
    /// serves the data as of that moment, however far the primary moves on.
    pub async fn pause_replay(&self) {
        let replica = connect_admin(&self.replica_url).await;
        replica.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
        let paused = eventually(async || {
            let state: String = replica.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await.unwrap().get(0);
            state == "paused"
        })
        .await;
        assert!(paused, "the replica pauses its replay");
    }

    pub async fn resume_replay(&self) {
        let replica = connect_admin(&self.replica_url).await;
        replica.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    }

    /// Waits until the replica has replayed everything the primary has written so far.
    pub async fn wait_caught_up(&self) {
        let primary = connect_admin(&self.primary_url).await;
        let written: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
        let replica = connect_admin(&self.replica_url).await;
        let caught_up = eventually(async || {
            // `$1::text` makes the parameter text, which the comparison casts to an LSN.
            replica
                .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&written])
                .await
                .unwrap()
                .get::<_, bool>(0)
        })
        .await;
        assert!(caught_up, "the replica catches up with the primary");
    }

    /// Cuts the replica off from its primary, as a network partition would: it keeps serving
    /// what it has but receives nothing more. Returns what [`Self::reconnect_replica`] needs.
    pub async fn disconnect_replica(&self) -> String {
        let replica = connect_admin(&self.replica_url).await;
        let source: String = replica.query_one("SELECT current_setting('primary_conninfo')", &[]).await.unwrap().get(0);
        set_primary_conninfo(&replica, "").await;
        let stopped = eventually(async || {
            replica.query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[]).await.unwrap().get::<_, i64>(0) == 0
        })
        .await;
        assert!(stopped, "the replica stops receiving");
        source
    }

    pub async fn reconnect_replica(&self, source: &str) {
        set_primary_conninfo(&connect_admin(&self.replica_url).await, source).await;
    }

    /// Stops the replica at once, as a crash would.
    pub fn kill_replica(&self) {
        self.run(&["kill", "replica"]);
    }

    /// Starts the replica again on its port.
    pub fn restart_replica(&self) {
        self.run(&["restart", "replica"]);
    }

    fn run(&self, command: &[&str]) {
        let (name, rest) = command.split_first().unwrap();
        let status = std::process::Command::new("bash")
            .arg(Self::SCRIPT)
            .arg(name)
            .arg(&self.dir)
            .args(rest)
            .status()
            .expect("run deploy/pg_replica.sh");
        assert!(status.success(), "deploy/pg_replica.sh {command:?} failed");
    }
}

impl Drop for ReplicaPair {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash").arg(Self::SCRIPT).arg("stop").arg(&self.dir).status();
    }
}

async fn set_primary_conninfo(replica: &tokio_postgres::Client, conninfo: &str) {
    // ALTER SYSTEM takes no parameters; the value is quoted as a literal.
    let literal = conninfo.replace('\'', "''");
    replica.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{literal}'")).await.unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

/// Under `CI=true` a service a suite needs must be there: its absence fails the test
/// instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `deploy/pg_replica.sh start DIR PORTS…`; `None`, with the reason printed, when that
/// fails outside CI (no PostgreSQL server programs); under `CI=true` that fails the test.
fn start_private_servers(dir: &std::path::Path, ports: &[u16], what: &str, scenario: &str) -> Option<()> {
    let started = std::process::Command::new("bash")
        .arg(ReplicaPair::SCRIPT)
        .args(["start".as_ref(), dir.as_os_str()])
        .args(ports.iter().map(u16::to_string))
        .output();
    let failure = match started {
        Ok(output) if output.status.success() => return Some(()),
        Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
        Err(error) => error.to_string(),
    };
    let _ = std::process::Command::new("bash").arg(ReplicaPair::SCRIPT).arg("stop").arg(dir).status();
    if in_ci() {
        panic!("CI=true but {what} cannot be started: {failure}");
    }
    eprintln!("skipping {scenario} scenario: {what} cannot be started: {failure}");
    None
}

/// A PostgreSQL server of a test's own on a free port, started by `deploy/pg_replica.sh`
/// (primary only), for scenarios that crash it. Removed when dropped.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub url: String,
}

impl PrivatePostgres {
    /// `None`, with the reason printed, when the server cannot be started outside CI (no
    /// PostgreSQL server programs); under `CI=true` that fails the test.
    pub fn start() -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("orderly-postgres-{}", Uuid::now_v7().simple()));
        let port = free_port();
        start_private_servers(&dir, &[port], "a private PostgreSQL server", "a PostgreSQL crash")?;
        Some(Self { dir, url: format!("postgres://postgres@127.0.0.1:{port}/postgres") })
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), as a crash would.
    pub fn crash(&self) {
        self.run("kill");
    }

    /// Starts it again after [`Self::crash`]; it recovers from its WAL.
    pub fn start_again(&self) {
        self.run("restart");
    }

    fn run(&self, command: &str) {
        let status = std::process::Command::new("bash")
            .arg(ReplicaPair::SCRIPT)
            .arg(command)
            .arg(&self.dir)
            .arg("primary")
            .status()
            .expect("run deploy/pg_replica.sh");
        assert!(status.success(), "deploy/pg_replica.sh {command} failed");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash").arg(ReplicaPair::SCRIPT).arg("stop").arg(&self.dir).status();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}
