//! End-to-end tests of the `vm-capsule` binary, one module per subcommand group.
// The 100-line bound is for the library's code; a test may tell one long story.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    missing_docs
)]

mod ad;
mod boot;
mod checkpoint;
mod checkpoint_route;
mod cmd;
mod crash;
mod direct_boot;
mod doctor;
mod execute_node;
mod guests;
mod guests_world;
mod hooks;
mod host_paths;
mod hostile;
mod inputs;
mod interrupt;
mod layout;
mod libvirt;
mod live_output;
mod maintainer;
mod network;
mod ops;
mod original_job;
mod package;
mod policy;
mod router;
mod run_hygiene;
mod started_by_htcondor;
mod vanilla;
