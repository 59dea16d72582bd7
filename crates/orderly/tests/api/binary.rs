//! The `orderly` binary as an operator runs it: configuration errors, logs, signals, commands.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_orderly");

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("orderly-bin-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}/orderly.db", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command with a clean `ORDERLY_*` environment rooted in `dir`.
fn orderly(dir: &TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("ORDERLY_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("ORDERLY_DATA_DIR", &dir.0)
        .env("ORDERLY_DATABASE_URL", dir.database_url())
        .current_dir(&dir.0);
    command
}

#[test]
fn bad_configuration_stops_the_process_with_one_line_naming_the_setting() {
    let secret_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----";
    let cases: &[(&str, &str, &str)] = &[
        ("ORDERLY_LISTEN", "not-an-address", "ORDERLY_LISTEN"),
        ("ORDERLY_DATABASE_URL", "mysql://localhost/db", "ORDERLY_DATABASE_URL"),
        ("ORDERLY_REQUEST_TIMEOUT", "10", "ORDERLY_REQUEST_TIMEOUT"),
        ("ORDERLY_DATABASE_MAX_CONNECTIONS", "0", "ORDERLY_DATABASE_MAX_CONNECTIONS"),
        ("ORDERLY_LOG_FORMAT", "xml", "ORDERLY_LOG_FORMAT"),
        ("ORDERLY_JWT_PRIVATE_KEY", secret_key, "ORDERLY_JWT_PRIVATE_KEY"),
        ("ORDERLY_DATABASE_URL", "postgres://user:hunter2@127.0.0.1:1/db", "ORDERLY_JWT_PRIVATE_KEY"),
        ("ORDERLY_PAYMENT_PROVIDER_DEADLINE", "10s", "ORDERLY_PAYMENT_PROVIDER_DEADLINE"),
        ("ORDERLY_SANDBOX_FAILURE_RATE", "1.5", "ORDERLY_SANDBOX_FAILURE_RATE"),
        // A replica needs PostgreSQL; the embedded default is SQLite.
        ("ORDERLY_DATABASE_READ_URL", "postgres://user:hunter2@127.0.0.1:1/db", "ORDERLY_DATABASE_READ_URL"),
        ("ORDERLY_DATABASE_READ_MAX_LAG", "soon", "ORDERLY_DATABASE_READ_MAX_LAG"),
        // Zero is no lifetime: tokens with `expires_in: 0` were handed out and kept working.
        ("ORDERLY_ACCESS_TOKEN_TTL", "0s", "ORDERLY_ACCESS_TOKEN_TTL"),
        // Shorter than the payment provider's deadline (6 s): the line names what was changed.
        ("ORDERLY_REQUEST_TIMEOUT", "5s", "ORDERLY_REQUEST_TIMEOUT"),
    ];
    for (name, value, named) in cases {
        let dir = TempDir::new();
        let mut child = orderly(&dir, &["serve"])
            .env("ORDERLY_LISTEN", "127.0.0.1:0")
            .env(name, value)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_with_timeout(&mut child, Duration::from_secs(20));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{name}={value} stops the process as a usage error");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one line, got {stderr:?}");
        assert!(stderr.contains(named), "{name}: the line names {named}: {stderr:?}");
        assert!(!stderr.contains("hunter2") && !stderr.contains("bm90IGEga2V5"), "secrets are not echoed: {stderr:?}");
    }
}

/// `--log-format text` written into a file or a pipe is plain text, without colour codes.
#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    let dir = TempDir::new();
    let (mut child, lines) = serve_reading_stdout(&dir, "text");
    let mut log = Vec::new();
    while !log.last().is_some_and(|line: &String| line.contains("listening")) {
        log.push(lines.recv_timeout(Duration::from_secs(30)).expect("the server says it listens"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.iter().all(|line| !line.contains('\u{1b}')), "no escape codes: {log:?}");
    assert!(log.iter().any(|line| line.contains("INFO")), "the level is written as text: {log:?}");
}

/// `orderly serve` on a free port with `--log-format format`, its stdout lines as they come.
fn serve_reading_stdout(dir: &TempDir, format: &str) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = orderly(dir, &["serve", "--listen", "127.0.0.1:0", "--log-format", format])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    (child, lines)
}

#[test]
fn serve_logs_one_json_line_per_request_never_logs_secrets_and_stops_on_sigterm() {
    let dir = TempDir::new();
    let (mut child, lines) = serve_reading_stdout(&dir, "json");
    let mut log = Vec::new();
    let address = loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("the server reports its address");
        let entry: Value = serde_json::from_str(&line).expect("every log line is JSON");
        log.push(line);
        if let Some(address) = entry["address"].as_str() {
            break address.to_owned();
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let password = "a very secret password";
    let (access_token, refresh_token) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://{address}/api/v1");
        let registered = client
            .post(format!("{base}/auth/register"))
            .json(&json!({"email": "log@example.com", "password": password, "name": "Log"}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201);
        let tokens: Value = client
            .post(format!("{base}/auth/token"))
            .form(&[("grant_type", "password"), ("username", "log@example.com"), ("password", password)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let access_token = tokens["access_token"].as_str().unwrap().to_owned();
        let me = client
            .get(format!("{base}/users/me"))
            .bearer_auth(&access_token)
            .header("x-request-id", "log-test-1")
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
        (access_token, tokens["refresh_token"].as_str().unwrap().to_owned())
    });

    let terminated = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(terminated.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "SIGTERM is a clean shutdown, got {status:?}");
    log.extend(lines.try_iter());

    let access: Vec<Value> = log
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("every log line is JSON"))
        .filter(|entry| entry["target"] == "orderly::access")
        .collect();
    assert_eq!(access.len(), 3, "one access line per request: {log:#?}");
    for entry in &access {
        for field in ["timestamp", "level", "request_id", "trace_id", "method", "route", "status", "latency_ms"] {
            assert!(!entry[field].is_null(), "access line lacks {field}: {entry}");
        }
    }
    let me = access.iter().find(|e| e["request_id"] == "log-test-1").expect("the caller's request id is logged");
    assert_eq!(me["route"], "/api/v1/users/me");
    assert_eq!(me["status"], 200);
    assert!(me["user_id"].as_str().is_some_and(|id| !id.is_empty()), "the authenticated user is logged");

    let everything = log.join("\n");
    for secret in [password, access_token.as_str(), refresh_token.as_str()] {
        assert!(!everything.contains(secret), "a secret reached the log");
    }
}

fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not stop in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn admin_create_user_takes_the_password_from_stdin_never_argv() {
    let dir = TempDir::new();
    let mut child = orderly(&dir, &["admin", "create-user", "--email", "Root@Example.com", "--role", "admin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"root-password-1\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("created admin user root@example.com"));

    let again = orderly(&dir, &["admin", "create-user", "--email", "root@example.com"])
        .env("ORDERLY_ADMIN_PASSWORD", "other-password")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let short = orderly(&dir, &["admin", "create-user", "--email", "x@example.com"])
        .env("ORDERLY_ADMIN_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!short.status.success());

    let on_argv = orderly(&dir, &["admin", "create-user", "--email", "y@example.com", "--password", "root-password-1"])
        .output()
        .unwrap();
    assert!(!on_argv.status.success(), "there is no --password flag");
}

#[test]
fn migrate_and_seed_prepare_a_database_and_seed_is_repeatable() {
    let dir = TempDir::new();
    let migrate = orderly(&dir, &["migrate"]).output().unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    for _ in 0..2 {
        let seed = orderly(&dir, &["seed", "--demo"]).output().unwrap();
        assert!(seed.status.success(), "{}", String::from_utf8_lossy(&seed.stderr));
    }
    assert!(dir.0.join("orderly.db").exists());
}
