//! oauthd: OAuth plumbing for self-hosted apps.
//!
//! Layers, arrows pointing down only:
//! `cli` → `http` → services (`states`, `apikeys`) → `store` (SQLite; Redis later).

pub mod admin;
pub mod apikeys;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod metrics;
pub mod namespace;
pub mod oauth;
pub mod rekey;
pub mod secret;
pub mod states;
pub mod store;
pub mod vault;
