//! The REST API: the handlers of the server, pool and health routes, and the bodies they take
//! and answer, with their validation. Every error is an [`ApiError`](crate::ApiError)
//! (`{"detail": …}`); [`ApiDoc`](crate::ApiDoc) is the OpenAPI document of it all.
//!
//! - [`servers`]: `/servers` and `/servers/{id}`, with their bodies in [`server_bodies`];
//! - [`pools`]: `/servers/{id}/pool/…` and `/servers/pools…`, with their bodies in
//!   [`pool_bodies`];
//! - [`health`]: `/health`, `/ready` and `/metrics`.

pub mod health;
pub mod pool_bodies;
pub mod pools;
pub mod server_bodies;
pub mod servers;
