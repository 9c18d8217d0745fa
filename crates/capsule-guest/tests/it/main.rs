//! capsule-init end to end: host mode (no VM) and real boots of the test guest under QEMU.
#![allow(clippy::unwrap_used)]

mod boot;
mod harness;
mod host;
mod label;
