//! The `dynabase` binary package: configuration, adapters (stores, Redis),
//! the HTTP API and the composition that runs them around the actors of
//! `dynabase_actors`.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod app;
pub mod billing_cli;
pub mod cli;
pub mod http;
pub mod org_admin;
pub mod org_cli;
pub mod proxy;
pub mod settings;
pub mod usage_feed;
pub mod usage_spill;
