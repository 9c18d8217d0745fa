//! The exit codes vm-capsule gives a job when the job itself could not say, defined once for
//! finalize (as `ExitCode`) and the vanilla launcher (as its own exit status).

/// The capsule failed (the VM died, its results are unreadable, outputs were not placed), as
/// `docker run` uses 125 for its own failures.
pub const CAPSULE_FAILED: u8 = 125;
/// The job could not be started in the guest (missing executable, ...), as a shell's 127.
pub const NOT_STARTED: u8 = 127;
