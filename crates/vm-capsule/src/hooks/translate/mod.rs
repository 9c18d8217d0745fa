//! The translate hook: vanilla job ad in, VM-universe ad out, capsule staged in scratch.
//!
//! stdin is the route line, `------`, and the job ad (JobRouterHookMgr `hookTranslateJob`).
//! stdout must be the complete routed ad: it replaces the router's copy. Exit codes follow
//! `TranslateClient::hookExited`: 0 with output continues; non-zero makes the router yield
//! the job and retry later, so permanent problems first put the original on hold with
//! `condor_hold` (reference/hold-path.md) and transient ones just exit non-zero.

mod capsule;
mod config;
mod error;
mod hold;
mod hook;
mod inputs;
mod vm;

pub use config::{RoutedUniverse, TranslateConfig, PIPE_BUFFER_MAX, PIPE_BUFFER_WARN};
pub use error::{TranslateError, Translated};
pub use hold::hold_original;
pub use hook::translate;

use capsule::stage;
use error::{error_chain, permanent, transient};
use inputs::{plan_inputs, write_input_tar, InputPlan};
use vm::stage_vm;
