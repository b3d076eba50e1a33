//! Sending signals to the component processes `up` started (std has no `kill`).
#![allow(unsafe_code)]

/// Sends `signal` to `pid`; false if there is no such process.
pub fn send(pid: u32, signal: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}

pub const TERM: i32 = libc::SIGTERM;
pub const KILL: i32 = libc::SIGKILL;
