//! Catalog: products with prices in minor units and stock levels. Public reads are cacheable
//! (`Cache-Control: public`); writes are for admins. Archiving deactivates a product instead
//! of deleting it, so orders that reference it keep their snapshot.
//!
//! Owns the `products` table.

pub mod cache;
pub mod domain;
mod routes;
pub mod service;
pub mod store;

pub use routes::router;
