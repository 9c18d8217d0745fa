//! vm-capsule's shared core: what the submit side, the execute side and the admin tools all
//! speak. The vanilla job model ([`job`]), the capsule's data disk ([`capsule`]), the knobs
//! ([`settings`]), the routed ad that carries a job from the hooks to an execute node
//! ([`routed`], [`boot`], [`node_image`], [`template`]), and the returned disk read back
//! into the job's exit and outputs ([`returned`], [`usage`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod boot;
pub mod capsule;
pub mod condor_config;
pub mod condor_tools;
pub mod digest;
pub mod environment;
pub mod exit;
pub mod host_paths;
pub mod identity;
pub mod job;
pub mod nocloud;
pub mod node_image;
pub mod perms;
pub mod returned;
pub mod routed;
pub mod scratch;
pub mod settings;
pub mod temp_record;
pub mod template;
pub mod text;
pub mod usage;
pub mod whose;
