//! Crash points between two steps of the write, flush and hydrate paths.
//!
//! `crash_point!("persister::chunk_stored")` marks a place where a fault test can make the
//! process die at once — no destructors, no graceful shutdown, like SIGKILL — to prove
//! that a crash there loses and duplicates nothing. The points exist only in binaries
//! built with the `failpoints` feature (scripts/test builds such a set apart from the
//! normal ones); everywhere else the macro expands to nothing. In those binaries,
//! `FAILPOINTS=<name>=return` (read by [`setup`] at start) arms a point: the first time
//! the process reaches it, it aborts.
//!
//! This crate knows nothing of the services; it only names the mechanism.

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use fail;

/// Marks a step boundary where a fault test may crash the process (see the crate docs).
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::fail::fail_point!($name, |_| $crate::crash($name))
    };
}

/// Marks a step boundary where a fault test may crash the process (see the crate docs).
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {};
}

/// Arms the points named in `FAILPOINTS` (a no-op without the `failpoints` feature).
/// Call once at the start of `main`.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing");
    std::process::abort()
}
