//! The application state: [`AppState`] owns every component, once, and hands each router,
//! extractor and middleware the component it asks for.
//!
//! Capabilities never name this type. Each declares what it uses, as a component of its own
//! (`catalog::Catalog`, `payments::Payments`, `accounts::auth::Authenticator`, …), and its
//! router is generic over any state that provides it (`Catalog: FromRef<S>`). So no capability
//! depends on the composition root, a service takes only the parts it works with, and a
//! capability's needs can be read from its router's bounds. This module may name every
//! component; only [`crate::app`] builds it.

use std::sync::Arc;

use axum::extract::FromRef;
use orderly_kit::contract::Contract;

use crate::accounts::Accounts;
use crate::accounts::auth::Authenticator;
use crate::catalog::Catalog;
use crate::db::Database;
use crate::events::Events;
use crate::idempotency::Idempotency;
use crate::limits::RateLimits;
use crate::ops::Operations;
use crate::orders::Orders;
use crate::payments::Payments;
use crate::reports::Reports;
use crate::webhooks::Webhooks;

/// Every component of a running instance, shared: the router clones its state for every
/// request, and this clone is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Components>);

impl AppState {
    pub fn new(components: Components) -> Self {
        Self(Arc::new(components))
    }
}

impl std::ops::Deref for AppState {
    type Target = Components;
    fn deref(&self) -> &Components {
        &self.0
    }
}

/// Holds no per-request or per-user state: any instance can serve any request. Components
/// share their pools, caches and clients, so handing one to a request copies handles, never
/// the things they point to.
pub struct Components {
    /// Also watched for replica lag by a background task.
    pub db: Database,
    /// Behind the `Principal` and `Admin` extractors of every capability.
    pub authenticator: Authenticator,
    pub accounts: Accounts,
    pub catalog: Catalog,
    pub orders: Orders,
    /// Also what the payment reconciler works with.
    pub payments: Payments,
    pub reports: Reports,
    pub events: Events,
    pub webhooks: Webhooks,
    pub operations: Operations,
    /// The state of `limits::middleware`; the token endpoint counts password attempts with it.
    pub rate_limits: RateLimits,
    /// The state of `idempotency::middleware` and of the sweep of expired keys.
    pub idempotency: Idempotency,
    /// The published document's request rules, which the `Body` and `Params` extractors check.
    pub contract: Arc<Contract>,
}

/// `FromRef<AppState>` for each component a router or an extractor asks for: a clone of it.
macro_rules! provide {
    ($($field:ident: $component:ty),* $(,)?) => {
        $(
            impl FromRef<AppState> for $component {
                fn from_ref(state: &AppState) -> Self {
                    state.$field.clone()
                }
            }
        )*
    };
}

provide!(
    authenticator: Authenticator,
    accounts: Accounts,
    catalog: Catalog,
    orders: Orders,
    payments: Payments,
    reports: Reports,
    events: Events,
    webhooks: Webhooks,
    operations: Operations,
    rate_limits: RateLimits,
    contract: Arc<Contract>,
);
