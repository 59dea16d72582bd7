//! Reports: exports run in the background as jobs that survive crashes, kept in the database,
//! downloaded as CSV by their owner (or an admin) from any instance.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, Credentials, TestApp, assert_problem, eventually_within, scrape_metrics};
use crate::payments::id;

/// Inserts `count` pending orders of `user_id`, one second apart from 2026-01-01, straight into
/// the database (as many orders as a report needs to take a while), timestamps written as the
/// app writes them.
pub(crate) async fn insert_orders(app: &TestApp, user_id: &str, count: u32) {
    let items = r#"[{"product_id":"0193b1e8-0000-7000-8000-000000000001","sku":"BULK-1","name":"Bulk item","unit_price":250,"quantity":2,"line_total":500}]"#;
    let sql = match app.backend() {
        Backend::Postgres => format!(
            "INSERT INTO orders (id, user_id, status, currency, total, version, created_at, updated_at, items)
             SELECT gen_random_uuid(), '{user_id}', 'pending', 'USD', 500, 1,
                    timestamptz '2026-01-01 00:00:00Z' + n * interval '1 second',
                    timestamptz '2026-01-01 00:00:00Z' + n * interval '1 second', '{items}'
             FROM generate_series(1, {count}) AS n"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
             INSERT INTO orders (id, user_id, status, currency, total, version, created_at, updated_at, items)
             SELECT randomblob(16), X'{hex}', 'pending', 'USD', 500, 1,
                    strftime('%Y-%m-%dT%H:%M:%S+00:00', '2026-01-01 00:00:00', '+' || i || ' seconds'),
                    strftime('%Y-%m-%dT%H:%M:%S+00:00', '2026-01-01 00:00:00', '+' || i || ' seconds'), '{items}'
             FROM n",
            hex = user_id.replace('-', "")
        ),
    };
    app.execute_sql(&sql).await;
}

async fn request(app: &TestApp, who: &Credentials, body: Value) -> Value {
    let response = app.post_json("/api/v1/reports", Some(&who.access_token), &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["retry-after"], "1");
    let report: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/reports/{}", id(&report)));
    assert_eq!(report["status"], "queued");
    report
}

async fn get_report(app: &TestApp, who: &Credentials, report: &Value) -> Value {
    let response = app.get(&format!("/api/v1/reports/{}", id(report)), Some(&who.access_token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Polls the report until it has succeeded (or `timeout`); returns it.
async fn finished(app: &TestApp, who: &Credentials, report: &Value, timeout: Duration) -> Value {
    let done = eventually_within(timeout, async || get_report(app, who, report).await["status"] == "succeeded").await;
    let report = get_report(app, who, report).await;
    assert!(done, "the report did not finish: {report}");
    report
}

/// Downloads the report's CSV: its lines (without the line ends).
async fn download(app: &TestApp, who: &Credentials, report: &Value) -> Vec<String> {
    let response = app.get(report["download_url"].as_str().unwrap(), Some(&who.access_token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(response.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\r\n"), "RFC 4180 lines end in CRLF");
    text.split("\r\n").filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

const HEADER: &str = "id,user_id,status,currency,total,items,created_at,updated_at";

async fn customers_export_their_own_orders_and_admins_everyones(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let admin = app.admin().await;
    let (alice, bob) = (app.customer().await, app.customer().await);
    let product = app.create_product(&admin, json!({"stock": 100, "unit_price": 1250})).await;
    let mut alices = Vec::new();
    for quantity in 1..=3 {
        let order: Value = app.place_order(&alice, &[(&id(&product), quantity)]).await.json().await.unwrap();
        alices.push(order);
    }
    assert_eq!(app.place_order(&bob, &[(&id(&product), 1)]).await.status(), StatusCode::CREATED);

    let report = request(&app, &alice, json!({"kind": "orders_csv"})).await;
    let report = finished(&app, &alice, &report, Duration::from_secs(20)).await;
    assert_eq!(report["progress"], 100);
    assert_eq!(report["row_count"], 3);
    assert_eq!(report["user_id"], alice.user_id.as_str());
    let lines = download(&app, &alice, &report).await;
    assert_eq!(lines[0], HEADER);
    assert_eq!(lines.len(), 4, "a header and Alice's three orders: {lines:?}");
    for (line, order) in lines[1..].iter().zip(&alices) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], id(order));
        assert_eq!(fields[1], alice.user_id);
        assert_eq!(fields[2], "pending");
        assert_eq!(fields[3], "USD");
        assert_eq!(fields[4], order["total"].to_string(), "money in minor units");
        assert_eq!(fields[5], "1");
        assert_eq!(fields[6], order["created_at"].as_str().unwrap());
    }
    // Bob cannot see Alice's report; an admin can.
    let path = format!("/api/v1/reports/{}", id(&report));
    assert_problem(app.get(&path, Some(&bob.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
    let download_path = format!("{path}/download");
    assert_problem(app.get(&download_path, Some(&bob.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.get(&download_path, Some(&admin.access_token)).await.status(), StatusCode::OK);

    // An admin's report covers everyone; the period narrows it.
    let all = request(&app, &admin, json!({"kind": "orders_csv"})).await;
    let all = finished(&app, &admin, &all, Duration::from_secs(20)).await;
    assert_eq!(all["row_count"], 4);
    assert_eq!(all["user_id"], Value::Null);
    let since = alices[0]["created_at"].as_str().unwrap();
    let later = request(&app, &admin, json!({"kind": "orders_csv", "created_after": since})).await;
    let later = finished(&app, &admin, &later, Duration::from_secs(20)).await;
    assert_eq!(later["row_count"], 3);
    assert_eq!(download(&app, &admin, &later).await.len(), 4);
}

async fn a_report_is_refused_for_download_until_it_is_ready(backend: Backend) {
    // No worker: the report stays queued.
    let Some(app) = TestApp::spawn_with(backend, &["--run-worker=false"]).await else { return };
    let customer = app.customer().await;
    let report = request(&app, &customer, json!({"kind": "orders_csv"})).await;
    let response = app.get(&format!("/api/v1/reports/{}", id(&report)), Some(&customer.access_token)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let seen: Value = response.json().await.unwrap();
    assert_eq!((seen["status"].as_str(), seen["progress"].as_i64()), (Some("queued"), Some(0)));
    assert_eq!(seen["download_url"], Value::Null);
    let download_path = format!("/api/v1/reports/{}/download", id(&report));
    let refused = app.get(&download_path, Some(&customer.access_token)).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, StatusCode::CONFLICT, "report_not_ready").await;

    for bad in [json!({"kind": "users_csv"}), json!({}), json!({"kind": "orders_csv", "format": "xlsx"})] {
        let response = app.post_json("/api/v1/reports", Some(&customer.access_token), &bad).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    // A worker started later takes it.
    let _worker = app.spawn_worker_process(&[]).await;
    let done = finished(&app, &customer, &report, Duration::from_secs(20)).await;
    assert_eq!(done["row_count"], 0);
    assert_eq!(download(&app, &customer, &done).await, [HEADER]);
}

async fn a_large_report_is_written_and_streamed_in_chunks(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let admin = app.admin().await;
    insert_orders(&app, &admin.user_id, 5000).await;
    let report = request(&app, &admin, json!({"kind": "orders_csv"})).await;
    let report = finished(&app, &admin, &report, Duration::from_secs(60)).await;
    assert_eq!(report["row_count"], 5000);
    let lines = download(&app, &admin, &report).await;
    assert_eq!(lines.len(), 5001);
    let ids: HashSet<&str> = lines[1..].iter().map(|line| line.split(',').next().unwrap()).collect();
    assert_eq!(ids.len(), 5000, "each order once");
    let times: Vec<&str> = lines[1..].iter().map(|line| line.split(',').nth(6).unwrap()).collect();
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "oldest first");
    let metrics = scrape_metrics(&app).await;
    assert!(metrics["orderly_report_rows_total"] >= 5000.0);
}

async fn a_worker_killed_mid_report_loses_nothing(backend: Backend) {
    let Some(api) = TestApp::spawn_with(backend, &["--run-worker=false"]).await else { return };
    let admin = api.admin().await;
    insert_orders(&api, &admin.user_id, 60_000).await;
    let flags = ["--job-lease=2s", "--job-poll-interval=100ms"];
    let mut first = api.spawn_worker_process(&flags).await;
    let report = request(&api, &admin, json!({"kind": "orders_csv"})).await;
    let started = eventually_within(Duration::from_secs(30), async || {
        let seen = get_report(&api, &admin, &report).await;
        seen["status"] == "running" && seen["row_count"].as_i64().unwrap() > 0
    })
    .await;
    let at_kill = get_report(&api, &admin, &report).await;
    first.kill();
    assert!(started && at_kill["status"] == "running", "killed mid-report: {at_kill}");

    let _second = api.spawn_worker_process(&flags).await;
    let report = finished(&api, &admin, &report, Duration::from_secs(90)).await;
    assert_eq!(report["row_count"], 60_000);
    let lines = download(&api, &admin, &report).await;
    assert_eq!(lines[0], HEADER);
    assert_eq!(lines.iter().filter(|line| line.as_str() == HEADER).count(), 1);
    let ids: HashSet<&str> = lines[1..].iter().map(|line| line.split(',').next().unwrap()).collect();
    assert_eq!((lines.len() - 1, ids.len()), (60_000, 60_000), "each order exactly once after the takeover");
}

/// A worker whose job was taken over (its attempt superseded) writes nothing more of it.
async fn a_worker_that_lost_its_job_writes_nothing_more(backend: Backend) {
    let Some(api) = TestApp::spawn_with(backend, &["--run-worker=false"]).await else { return };
    let admin = api.admin().await;
    insert_orders(&api, &admin.user_id, 200_000).await;
    let _worker = api.spawn_worker_process(&["--job-poll-interval=100ms"]).await;
    let report = request(&api, &admin, json!({"kind": "orders_csv"})).await;
    let started = eventually_within(Duration::from_secs(30), async || {
        get_report(&api, &admin, &report).await["row_count"].as_i64().unwrap() > 0
    })
    .await;
    assert!(started);
    // As another worker's claim would: a later attempt holds the job, its lease far off.
    api.execute_sql("UPDATE jobs SET attempts = attempts + 1, due_at = '2999-01-01T00:00:00+00:00'").await;
    let at_takeover = get_report(&api, &admin, &report).await;
    assert_eq!(at_takeover["status"], "running", "taken over mid-export: {at_takeover}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = get_report(&api, &admin, &report).await["row_count"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = get_report(&api, &admin, &report).await;
    assert_eq!(
        (later["status"].as_str(), &later["row_count"]),
        (Some("running"), &settled),
        "no chunk after the takeover"
    );
    // The other claim lapses: the job is claimed again and the report completes, each row once.
    api.execute_sql("UPDATE jobs SET due_at = '2000-01-01T00:00:00+00:00'").await;
    let report = finished(&api, &admin, &report, Duration::from_secs(90)).await;
    let lines = download(&api, &admin, &report).await;
    let ids: HashSet<&str> = lines[1..].iter().map(|line| line.split(',').next().unwrap()).collect();
    assert_eq!((lines.len() - 1, ids.len()), (200_000, 200_000));
}

async fn a_stopping_worker_gives_its_job_back(backend: Backend) {
    let Some(api) = TestApp::spawn_with(backend, &["--run-worker=false"]).await else { return };
    let admin = api.admin().await;
    insert_orders(&api, &admin.user_id, 60_000).await;
    let flags = ["--job-poll-interval=100ms", "--shutdown-grace=300ms"];
    let mut first = api.spawn_worker_process(&flags).await;
    let report = request(&api, &admin, json!({"kind": "orders_csv"})).await;
    let started = eventually_within(Duration::from_secs(30), async || {
        get_report(&api, &admin, &report).await["row_count"].as_i64().unwrap() > 0
    })
    .await;
    assert!(started);
    assert!(first.terminate(Duration::from_secs(10)).await, "the worker stops cleanly on SIGTERM");
    // Given back rather than left to lapse: the default 30 s lease would outlast this wait.
    let _second = api.spawn_worker_process(&flags).await;
    let report = finished(&api, &admin, &report, Duration::from_secs(25)).await;
    assert_eq!(report["row_count"], 60_000);
}

async fn a_job_that_keeps_failing_ends_failed_after_its_attempts(backend: Backend) {
    let flags = ["--job-max-attempts=3", "--job-retry-backoff=50ms", "--job-poll-interval=50ms"];
    let Some(app) = TestApp::spawn_with(backend, &flags).await else { return };
    let admin = app.admin().await;
    insert_orders(&app, &admin.user_id, 10).await;
    // A row the export cannot read: every attempt fails.
    app.execute_sql("UPDATE orders SET status = 'lost'").await;
    let report = request(&app, &admin, json!({"kind": "orders_csv"})).await;
    let failed = eventually_within(Duration::from_secs(20), async || {
        get_report(&app, &admin, &report).await["status"] == "failed"
    })
    .await;
    let seen = get_report(&app, &admin, &report).await;
    assert!(failed, "{seen}");
    assert_eq!(seen["error"], "the export failed; ask for a new report");
    let refused = app.get(&format!("/api/v1/reports/{}/download", id(&report)), Some(&admin.access_token)).await;
    assert_problem(refused, StatusCode::CONFLICT, "report_failed").await;
    let metrics = scrape_metrics(&app).await;
    assert_eq!(metrics["orderly_jobs{state=\"failed\"}"], 1.0);
    // Counters are the process's: other apps of this test process may add to them.
    assert!(metrics["orderly_job_runs_total{kind=\"report\",outcome=\"retried\"}"] >= 2.0);
    assert!(metrics["orderly_job_runs_total{kind=\"report\",outcome=\"failed\"}"] >= 1.0);
}

async fn a_report_is_gone_once_it_expires(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--report-ttl=1s"]).await else { return };
    let customer = app.customer().await;
    let report = request(&app, &customer, json!({"kind": "orders_csv"})).await;
    let report = finished(&app, &customer, &report, Duration::from_secs(20)).await;
    let expires_at = chrono::DateTime::parse_from_rfc3339(report["expires_at"].as_str().unwrap()).unwrap();
    let finished_at = chrono::DateTime::parse_from_rfc3339(report["finished_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires_at - finished_at, chrono::TimeDelta::seconds(1), "kept the TTL after it finished");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = format!("/api/v1/reports/{}", id(&report));
    assert_problem(app.get(&path, Some(&customer.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
    let download = format!("{path}/download");
    assert_problem(app.get(&download, Some(&customer.access_token)).await, StatusCode::NOT_FOUND, "not_found").await;
}

crate::on_every_backend_with_backend!(
    a_report_is_gone_once_it_expires,
    customers_export_their_own_orders_and_admins_everyones,
    a_large_report_is_written_and_streamed_in_chunks,
    a_report_is_refused_for_download_until_it_is_ready,
    a_worker_killed_mid_report_loses_nothing,
    a_worker_that_lost_its_job_writes_nothing_more,
    a_stopping_worker_gives_its_job_back,
    a_job_that_keeps_failing_ends_failed_after_its_attempts,
);
