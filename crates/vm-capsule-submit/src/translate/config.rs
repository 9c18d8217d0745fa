//! Limits of the translate hook's answer (its settings are [`vm_capsule_core::settings::TranslateSettings`]).

/// `PIPE_BUFFER_MAX` default: the router reads at most this much of a hook's stdout.
pub const PIPE_BUFFER_MAX: usize = 10240;
/// Warn in the log when the routed ad gets this close to [`PIPE_BUFFER_MAX`].
pub const PIPE_BUFFER_WARN: usize = 8192;
