//! oauthd: OAuth plumbing for self-hosted apps: a durable store for short-lived secrets
//! (OAuth `state` and the like) and a token broker for configured providers.
//!
//! Layers, arrows pointing down only:
//! `cli` → `http` → services (`states`, `apikeys`, `admin`, `broker` over `oauth` and
//! `vault`, `proxy`) → `store` (SQLite by default; Redis with the `redis` feature).
//!
//! Outside tests, nothing a user or the network can influence may panic: unwrap, expect,
//! panic and unchecked indexing are compile errors here (each exception says why).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// This build: the package version, and the commit and its date it was built from
/// (`build.rs`), as `--version` shows it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OAUTHD_COMMIT"),
    ", ",
    env!("OAUTHD_COMMIT_DATE"),
    ")"
);

pub mod admin;
pub mod apikeys;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod clock_watch;
pub mod config;
pub mod env_names;
pub mod http;
pub mod ip_range;
pub mod local_url;
pub mod logging;
pub mod metrics;
pub mod namespace;
pub mod notify;
pub mod numbers;
pub mod oauth;
pub mod paths;
pub mod proxy;
pub mod read_cache;
pub mod rekey;
pub mod rule_shadows;
pub mod secret;
pub mod state_data;
pub mod states;
pub mod store;
pub mod systemd_notify;
pub mod vault;
