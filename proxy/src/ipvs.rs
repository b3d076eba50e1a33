//! IPVS mode: only the check that the kernel has IPVS, so `--mode ipvs` fails at once with one
//! clear line on a kernel without it (this machine's), rather than half-programming a node.

use std::path::Path;

/// Why IPVS mode cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpvsError {
    /// The kernel has no IPVS and it cannot be loaded.
    #[error(
        "IPVS mode needs the ip_vs kernel module, which this kernel does not have; run with --mode iptables"
    )]
    NoKernelSupport,
    /// The kernel has IPVS, but miniorch does not program it yet.
    #[error("IPVS mode is not implemented in miniorch-proxy yet; run with --mode iptables")]
    NotImplemented,
}

/// What the check looks at, so tests can answer for the kernel.
pub trait Kernel {
    /// Whether IPVS is loaded (`/proc/net/ip_vs` exists).
    fn has_ipvs(&self) -> bool;
    /// Tries to load the module (`modprobe ip_vs`); false when that fails or is impossible.
    fn load_ipvs(&self) -> bool;
}

/// The running kernel.
pub struct HostKernel;

impl Kernel for HostKernel {
    fn has_ipvs(&self) -> bool {
        Path::new("/proc/net/ip_vs").exists()
    }

    fn load_ipvs(&self) -> bool {
        std::process::Command::new("modprobe")
            .arg("ip_vs")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// Whether IPVS mode can run on `kernel`.
pub fn check(kernel: &dyn Kernel) -> Result<(), IpvsError> {
    if kernel.has_ipvs() || (kernel.load_ipvs() && kernel.has_ipvs()) {
        // Detected, but there is no IPVS rule programming behind it yet.
        return Err(IpvsError::NotImplemented);
    }
    Err(IpvsError::NoKernelSupport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct FakeKernel {
        loaded: Cell<bool>,
        loadable: bool,
    }

    impl Kernel for FakeKernel {
        fn has_ipvs(&self) -> bool {
            self.loaded.get()
        }
        fn load_ipvs(&self) -> bool {
            if self.loadable {
                self.loaded.set(true);
            }
            self.loadable
        }
    }

    #[test]
    fn detection() {
        let cases = [
            (false, false, IpvsError::NoKernelSupport),
            (false, true, IpvsError::NotImplemented),
            (true, false, IpvsError::NotImplemented),
        ];
        for (loaded, loadable, want) in cases {
            let k = FakeKernel {
                loaded: Cell::new(loaded),
                loadable,
            };
            assert_eq!(check(&k), Err(want), "loaded={loaded} loadable={loadable}");
        }
    }

    #[test]
    fn the_message_is_the_one_line_users_see() {
        assert_eq!(
            IpvsError::NoKernelSupport.to_string(),
            "IPVS mode needs the ip_vs kernel module, which this kernel does not have; run with --mode iptables"
        );
    }
}
