//! vm-capsule: run HTCondor vanilla jobs inside virtual machines through JobRouter hooks.
//!
//! The library holds the domain logic the `vm-capsule` binary wires together: the vanilla
//! job model ([`job`]); later the knobs, VM-flavour ad builders and the hooks themselves.
#![forbid(unsafe_code)]

pub mod boot;
pub mod config;
pub mod hooks;
pub mod job;
pub mod launcher;
pub mod routed;
pub mod runner;
pub mod template;
