//! What a workspace is made of: its repositories (cloned and inspected with the `git` tool)
//! and the configuration file they carry. Not the sandbox that runs it, nor the tasks themselves.

pub mod config;
pub mod egress;
pub mod git;
pub mod image;
