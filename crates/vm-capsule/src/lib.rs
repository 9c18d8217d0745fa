//! vm-capsule: run HTCondor vanilla jobs inside virtual machines through JobRouter hooks.
//!
//! The library holds the domain logic the `vm-capsule` binary wires together: the knobs
//! ([`settings`]), the vanilla job model ([`job`]), the template ([`template`]), the routed ads
//! ([`routed`], [`boot`]), the JobRouter hooks ([`hooks`]) with the scratch prefix they share
//! ([`scratch`]) and who they run as ([`identity`]), the local execute node ([`runner`],
//! [`launcher`]), and the one reader of a returned data disk both ends share ([`returned`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod boot;
pub mod capsule;
pub mod chirp;
pub mod condor_config;
pub mod condor_tools;
pub mod digest;
pub mod doctor;
pub mod exit;
pub mod hooks;
pub mod identity;
pub mod job;
pub mod launcher;
pub mod libvirt;
pub mod nocloud;
pub mod node_image;
pub mod perms;
pub mod probe;
pub mod qemu;
pub mod returned;
pub mod routed;
pub mod run_files;
pub mod runner;
pub mod scratch;
pub mod settings;
pub mod snippet;
pub mod temp_record;
pub mod template;
pub mod text;
pub mod usage;
