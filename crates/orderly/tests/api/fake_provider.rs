//! A payment provider on a random local port, speaking the HTTP provider protocol
//! (`POST /charges`, `POST /refunds`, `GET /charges?idempotency_key=`,
//! `GET /refunds?idempotency_key=`), that can decline, fail, slow down, hang or recover on
//! command and records every charge and refund it makes with its idempotency key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
struct Ledger {
    /// Charge and refund calls that reached the provider, answered or not.
    calls: usize,
    /// Lookups of a charge by key.
    lookups: usize,
    /// The next this many calls answer 500 without doing anything.
    fail_next: usize,
    /// Every call answers 500.
    down: bool,
    /// Calls do their work, then never answer.
    hang: bool,
    /// Calls wait this long before doing their work and answering.
    delay: Duration,
    /// Lookups of these keys answer 500.
    broken_lookups: std::collections::HashSet<String>,
    /// Charges made: idempotency key → (charge id, amount).
    charges: HashMap<String, (String, i64)>,
    /// Refunds made: idempotency key → (refund id, amount).
    refunds: HashMap<String, (String, i64)>,
    /// The `traceparent` of each charge call, in arrival order.
    charge_traceparents: Vec<String>,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub url: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let app = axum::Router::new()
            .route("/charges", post(charge).get(find_charge))
            .route("/refunds", post(refund).get(find_refund))
            .with_state(Arc::clone(&ledger));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, ledger }
    }

    /// The `traceparent` each charge call carried, in arrival order.
    pub fn charge_traceparents(&self) -> Vec<String> {
        self.ledger.lock().unwrap().charge_traceparents.clone()
    }

    pub fn fail_next(&self, calls: usize) {
        self.ledger.lock().unwrap().fail_next = calls;
    }

    pub fn set_down(&self, down: bool) {
        self.ledger.lock().unwrap().down = down;
    }

    pub fn set_hang(&self, hang: bool) {
        self.ledger.lock().unwrap().hang = hang;
    }

    /// Makes a charge under `key`, as a call that got no answer would have.
    pub fn charge_under(&self, key: &str, amount: i64) {
        let mut ledger = self.ledger.lock().unwrap();
        let next = ledger.charges.len();
        ledger.charges.insert(key.to_owned(), (format!("ch_fake_{next}"), amount));
    }

    /// Makes every lookup of `key` fail.
    pub fn break_lookups_of(&self, key: &str) {
        self.ledger.lock().unwrap().broken_lookups.insert(key.to_owned());
    }

    pub fn set_delay(&self, delay: Duration) {
        self.ledger.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> usize {
        self.ledger.lock().unwrap().calls
    }

    pub fn lookups(&self) -> usize {
        self.ledger.lock().unwrap().lookups
    }

    /// Distinct charges made (one per idempotency key).
    pub fn charges(&self) -> Vec<i64> {
        self.ledger.lock().unwrap().charges.values().map(|(_, amount)| *amount).collect()
    }

    pub fn refunded(&self) -> i64 {
        self.ledger.lock().unwrap().refunds.values().map(|(_, amount)| *amount).sum()
    }
}

type Shared = Arc<Mutex<Ledger>>;

/// What to do with a call, after its delay: fail it (`Err`, answered 500), or do the work and
/// then answer (`Ok(false)`) or hang (`Ok(true)`).
async fn arrive(ledger: &Shared) -> Result<bool, StatusCode> {
    let delay = {
        let mut ledger = ledger.lock().unwrap();
        ledger.calls += 1;
        ledger.delay
    };
    tokio::time::sleep(delay).await;
    let mut ledger = ledger.lock().unwrap();
    if ledger.down {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    if ledger.fail_next > 0 {
        ledger.fail_next -= 1;
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(ledger.hang)
}

fn key(headers: &HeaderMap) -> String {
    headers.get("idempotency-key").expect("every provider call carries a key").to_str().unwrap().to_owned()
}

async fn charge(State(ledger): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(traceparent) = headers.get("traceparent").and_then(|value| value.to_str().ok()) {
        ledger.lock().unwrap().charge_traceparents.push(traceparent.to_owned());
    }
    let declined = body["payment_method"] == "pm_card_declined";
    act(ledger, key(&headers), body["amount"].as_i64().unwrap(), declined, |ledger| &mut ledger.charges, "ch_fake")
        .await
}

async fn find_charge(State(ledger): State<Shared>, query: axum::extract::Query<HashMap<String, String>>) -> Response {
    look_up(&ledger, query, |ledger| &ledger.charges)
}

async fn refund(State(ledger): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    act(ledger, key(&headers), body["amount"].as_i64().unwrap(), false, |ledger| &mut ledger.refunds, "re_fake").await
}

/// Makes a charge or refund of `amount` under `key` (once per key: a repeat gets the first
/// one's id), or declines it. Like a real provider, it finishes what it started even when the
/// caller has given up waiting.
async fn act(
    ledger: Shared,
    key: String,
    amount: i64,
    declined: bool,
    made: fn(&mut Ledger) -> &mut HashMap<String, (String, i64)>,
    prefix: &'static str,
) -> Response {
    let work = tokio::spawn(async move {
        let hang = arrive(&ledger).await?;
        if declined {
            return Ok((StatusCode::PAYMENT_REQUIRED, json!({"code": "card_declined"}), hang));
        }
        let mut ledger = ledger.lock().unwrap();
        let made = made(&mut ledger);
        let next = made.len();
        let id = made.entry(key).or_insert_with(|| (format!("{prefix}_{next}"), amount)).0.clone();
        Ok::<_, StatusCode>((StatusCode::CREATED, json!({"id": id}), hang))
    });
    match work.await.unwrap() {
        Err(status) => status.into_response(),
        Ok((status, body, hang)) => {
            if hang {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            (status, Json(body)).into_response()
        }
    }
}

async fn find_refund(State(ledger): State<Shared>, query: axum::extract::Query<HashMap<String, String>>) -> Response {
    look_up(&ledger, query, |ledger| &ledger.refunds)
}

/// Answers a lookup by idempotency key: 200 with what was made under it, 404 if nothing was.
fn look_up(
    ledger: &Shared,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    made: impl Fn(&Ledger) -> &HashMap<String, (String, i64)>,
) -> Response {
    let mut ledger = ledger.lock().unwrap();
    ledger.lookups += 1;
    if ledger.down || ledger.broken_lookups.contains(&query["idempotency_key"]) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match made(&ledger).get(&query["idempotency_key"]) {
        Some((id, _)) => (StatusCode::OK, Json(json!({"id": id}))).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
