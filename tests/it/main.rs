//! The black-box suite: every test runs the real `oauthd` binary (and real peers: the test
//! OpenID provider, redis-server, Chromium) and talks to it over HTTP or its CLI. One test
//! binary, so the harness in `common` compiles and links once.

#[macro_use]
mod common;

mod backup;
mod broker;
mod cli;
mod clients;
mod device;
mod examples;
mod migrations;
mod notify;
mod openapi;
mod operator;
mod page;
mod paste;
mod provider_faults;
mod provider_trust;
mod proxy;
mod read_only;
mod redis;
mod security;
mod services;
mod state_api;
mod state_kinds;
mod state_routes;
mod store_contract;
mod tenants;
mod transfer;
