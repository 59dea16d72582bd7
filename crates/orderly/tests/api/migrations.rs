//! Schema migrations: several instances starting at once apply each migration once, and a
//! database made by release 0.1 (whose migrations were Rust code) is upgraded in place and
//! serves what it held.

use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, fresh_postgres_database, postgres_query_i64};

const BINARY: &str = env!("CARGO_BIN_EXE_orderly");
/// Migrations this release knows.
const MIGRATIONS: i64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_migrating_one_database_at_once_apply_each_migration_once() {
    let Some(database) = fresh_postgres_database().await else { return };
    let url = database.url();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            Command::new(BINARY)
                .arg("migrate")
                .env("ORDERLY_DATABASE_URL", url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let output = run.wait_with_output().unwrap();
        assert!(output.status.success(), "a concurrent migrate failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let recorded = postgres_query_i64(url, "SELECT count(*) FROM orderly_migrations").await;
    let distinct = postgres_query_i64(url, "SELECT count(DISTINCT version) FROM orderly_migrations").await;
    assert_eq!((recorded, distinct), (MIGRATIONS, MIGRATIONS), "each migration recorded once");
}

/// A landed migration is never edited, and a database made by a newer release is not touched:
/// either stops `orderly migrate` with a line saying which migration, and changes nothing.
#[test]
fn a_changed_or_unknown_migration_stops_the_migration() {
    let dir = std::env::temp_dir().join(format!("orderly-migrate-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/orderly.db", dir.display());
    let migrate = || Command::new(BINARY).arg("migrate").env("ORDERLY_DATABASE_URL", &url).output().unwrap();
    assert!(migrate().status.success());
    let database = rusqlite::Connection::open(dir.join("orderly.db")).unwrap();

    let checksum_of_4 = || -> String {
        database.query_row("SELECT checksum FROM orderly_migrations WHERE version = 4", [], |row| row.get(0)).unwrap()
    };
    let original = checksum_of_4();

    database.execute("UPDATE orderly_migrations SET checksum = 'edited' WHERE version = 4", []).unwrap();
    let changed = migrate();
    assert!(!changed.status.success(), "an edited migration is refused");
    let said = String::from_utf8_lossy(&changed.stderr);
    assert!(said.contains("migration 4 (0004_orders) was changed"), "{said}");
    database.execute("UPDATE orderly_migrations SET checksum = ?1 WHERE version = 4", [&original]).unwrap();
    assert!(migrate().status.success(), "the untouched record passes again");

    database
        .execute(
            "INSERT INTO orderly_migrations (version, name, checksum, applied_at) VALUES (99, '0099_future', 'x', 0)",
            [],
        )
        .unwrap();
    let unknown = migrate();
    assert!(!unknown.status.success(), "a database from a newer release is refused");
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("migration 99 (0099_future), which this release does not know"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn a_database_made_by_release_0_1_is_upgraded_in_place(backend: Backend) {
    let dump = match backend {
        Backend::Sqlite => include_str!("../fixtures/release-0.1/sqlite.sql"),
        Backend::Postgres => include_str!("../fixtures/release-0.1/postgres.sql"),
    };
    let Some(app) = TestApp::spawn_on_dump(backend, dump).await else { return };
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK, "no migration is pending");

    // Passwords and API keys stored by the release still work.
    let ada = app.login("ada@example.com", "correct horse 1").await;
    let ada_token = ada["access_token"].as_str().unwrap();
    let api_key = match backend {
        Backend::Sqlite => "sk_v9pD5t7n8RQbhinrSSZmY0KgchYQoCqwlgarZ9-4N0U",
        Backend::Postgres => "sk_vWbm9XTHLYXcaOlHALGo1ibNshwBscoXHV6GwPC80S0",
    };
    let me: Value = app.get("/api/v1/users/me", Some(api_key)).await.json().await.unwrap();
    assert_eq!((me["email"].as_str(), me["name"].as_str()), (Some("ada@example.com"), Some("Ada Lovelace")));

    // Ada's three orders, newest first, as the release served them.
    let orders: Value = app.get("/api/v1/orders", Some(ada_token)).await.json().await.unwrap();
    let summary: Vec<(&str, i64, usize)> = orders["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["status"].as_str().unwrap(), o["total"].as_i64().unwrap(), o["items"].as_array().unwrap().len()))
        .collect();
    assert_eq!(summary, [("pending", 4200, 1), ("cancelled", 990, 1), ("paid", 6400, 2)]);
    let paid = &orders["data"][2];
    assert_eq!(paid["items"][0]["name"], "Coffee mug \"Ünïcode\" ☕");
    assert_eq!((paid["items"][0]["quantity"].as_i64(), paid["items"][0]["line_total"].as_i64()), (Some(2), Some(2500)));

    // Products keep their stock, versions and archive flag.
    let products: Value = app.get("/api/v1/products?limit=10&sort=created_at", None).await.json().await.unwrap();
    let products: Vec<(&str, i64, bool, i64)> = products["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let sku = p["sku"].as_str().unwrap();
            (sku, p["stock"].as_i64().unwrap(), p["active"].as_bool().unwrap(), p["version"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(products, [("MUG-1", 94, true, 4), ("LAMP-1", 8, true, 5), ("POSTER-1", 5, false, 4)]);

    // The ledger and the figures agree with what was charged and refunded.
    let admin = app.login("admin@example.com", "admin-password-1").await;
    let admin_token = admin["access_token"].as_str().unwrap();
    let stats: Value = app.get("/api/v1/stats", Some(admin_token)).await.json().await.unwrap();
    assert_eq!(stats["users"], 3);
    assert_eq!(stats["orders"], 5);
    assert_eq!(stats["orders_by_status"], json!({"cancelled": 1, "paid": 2, "pending": 2, "refunded": 0}));
    assert_eq!(stats["revenue"], json!({"EUR": 6400 + 3750 - 1000}));
    let ledger: Value = app.get("/api/v1/transactions", Some(admin_token)).await.json().await.unwrap();
    let ledger_sum: i64 = ledger["data"].as_array().unwrap().iter().map(|t| t["amount"].as_i64().unwrap()).sum();
    assert_eq!((ledger["data"].as_array().unwrap().len(), ledger_sum), (3, 9150), "two charges and a refund");

    // And the upgraded database takes new writes: Ada pays her pending order.
    let pending = orders["data"][0]["id"].as_str().unwrap();
    let payment = app
        .request(reqwest::Method::POST, &format!("/api/v1/orders/{pending}/payments"))
        .bearer_auth(ada_token)
        .header("Idempotency-Key", "after-upgrade")
        .json(&json!({"payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(payment.status(), StatusCode::CREATED);
}

crate::on_every_backend_with_backend!(a_database_made_by_release_0_1_is_upgraded_in_place);
