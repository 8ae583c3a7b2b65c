//! The integration test binary: one harness that starts cells in-process on ephemeral ports
//! with temporary data directories, plus smoke tests that run the real executable.

// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
pub mod acme;
mod api;
mod attack;
pub mod backup;
pub mod browser;
mod build;
pub mod content;
mod harness;
pub mod image;
mod lifecycle;
mod openapi;
mod roles;
pub mod runtime;
pub mod selfupdate;
mod smoke;
mod tidy;
mod tls;
mod update;
