//! Synchronous signal handling for PID 1: block the signals in every thread, then take them one
//! at a time with `sigwait`. No asynchronous handler runs, so no code has to be signal-safe.
//!
//! PID 1 of a PID namespace ignores SIGTERM unless it handles it, so a container whose first
//! process does not would wait out the whole stop timeout before being killed.

// The libc calls below have no std equivalent; each one only reads or writes the memory passed.
#![allow(unsafe_code)]

use std::io;

pub use libc::{SIGCHLD, SIGINT, SIGTERM, c_int};

/// A set of signals, blocked in the calling thread (and so in every thread it spawns later) and
/// waited for synchronously.
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks `signals` in the calling thread. Call it before spawning threads: they inherit
    /// the mask, so the signals stay pending until [`SignalSet::wait`] takes them.
    pub fn block(signals: &[c_int]) -> io::Result<SignalSet> {
        // SAFETY: `set` is a plain C struct that sigemptyset initialises; sigaddset and
        // pthread_sigmask only read or write through the pointers given.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            if libc::sigemptyset(&mut set) != 0 {
                return Err(io::Error::last_os_error());
            }
            for &signal in signals {
                if libc::sigaddset(&mut set, signal) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        Ok(SignalSet { set })
    }

    /// Waits until one of the signals of the set is pending and returns its number.
    pub fn wait(&self) -> io::Result<c_int> {
        let mut signal: c_int = 0;
        // SAFETY: both pointers are valid for the duration of the call.
        let rc = unsafe { libc::sigwait(&self.set, &mut signal) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(signal)
    }
}

/// Reaps every child that has exited, without blocking; returns how many were reaped.
pub fn reap_children() -> usize {
    let mut reaped = 0;
    loop {
        // SAFETY: a null status pointer is allowed; WNOHANG makes the call non-blocking.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        reaped += 1;
    }
}

/// The name of a signal for log lines.
pub fn name(signal: c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaping_with_no_children_is_a_no_op() {
        assert_eq!(reap_children(), 0);
    }

    #[test]
    fn a_blocked_signal_is_taken_by_wait() {
        // SIGCHLD is ignored by default, so the test process survives even if the mask failed.
        let set = SignalSet::block(&[SIGCHLD]).expect("block SIGCHLD");
        // SAFETY: raise only sends a signal to the calling thread, where it stays pending.
        assert_eq!(unsafe { libc::raise(SIGCHLD) }, 0);
        assert_eq!(set.wait().expect("sigwait"), SIGCHLD);
    }
}
