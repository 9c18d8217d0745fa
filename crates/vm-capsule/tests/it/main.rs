//! End-to-end tests of the `vm-capsule` binary, one module per subcommand group.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod ad;
mod boot;
mod crash;
mod direct_boot;
mod hooks;
mod hostile;
mod inputs;
mod router;
mod vanilla;
