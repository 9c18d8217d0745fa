//! Console log lines stamped with the guest's uptime, so a boot log shows where time goes.

use nix::time::{clock_gettime, ClockId};

/// Seconds since boot (`CLOCK_BOOTTIME`), or 0 if the clock is unavailable.
pub fn uptime() -> f64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(0.0, |t| {
        // boot-relative seconds are small, so the conversion is exact enough for a log
        #[allow(clippy::cast_precision_loss)]
        let s = t.tv_sec() as f64 + f64::from(i32::try_from(t.tv_nsec()).unwrap_or(0)) / 1e9;
        s
    })
}

/// Print one line to stderr (the console in the guest) with the uptime.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("capsule-init [{:10.6}]: {}", $crate::log::uptime(), format_args!($($arg)*))
    };
}
