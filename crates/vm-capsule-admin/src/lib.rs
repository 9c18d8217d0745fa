//! vm-capsule's admin tools: templates ([`template`]: build, install the agent, check),
//! `doctor`, and the `config.d` snippet ([`snippet`]).
#![forbid(unsafe_code)]

pub mod doctor;
pub mod snippet;
pub mod template;
