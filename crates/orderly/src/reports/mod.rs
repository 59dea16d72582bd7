//! Reports: figures computed over the whole data set. Today `GET /stats`; asynchronous exports
//! come here too.

mod routes;
pub mod stats;

pub use routes::router;
