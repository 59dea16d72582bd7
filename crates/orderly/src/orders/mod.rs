//! Orders: placing an order snapshots catalog prices and reserves stock atomically; a pending
//! order can be cancelled, which returns its stock. Customers see only their own orders (others
//! are 404); admins see all.
//!
//! Owns the `orders` table (each order keeps its items), and moves `products.stock` only through
//! `store::take_stock` and `store::return_stock`.

pub mod domain;
mod routes;
pub mod service;
pub mod store;

pub use routes::router;
