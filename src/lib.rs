//! devcell: a self-hosted cloud development environment cell in one binary.
//!
//! The library holds everything; `main.rs` only parses the command line and calls in here.

pub mod admin;
pub mod agent;
pub mod api;
pub mod backup;
pub mod beneath;
pub mod cli;
pub mod client;
pub mod config;
pub mod content;
pub mod domain;
pub mod edge;
pub mod human;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod trust;
pub mod update;
pub mod version;
pub mod web;
pub mod workers;
