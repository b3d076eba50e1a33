//! What the binaries of miniorch's own images share: the few process-level calls (signal masks,
//! `sigwait`, reaping children) that std does not offer.
//!
//! std + libc only: the binaries are linked statically and run alone in `FROM scratch` images,
//! so every dependency would end up inside every pod.

pub mod signals;

// The nested static build lives outside the crate (build scripts include it); its ELF check is
// tested here.
#[cfg(test)]
#[path = "../build_static.rs"]
mod build_static;
