//! Builds the binaries of miniorch's own images (`pause`, `demo`) as static executables, by a
//! nested `cargo build` with its own target directory and a clean environment.
//!
//! Not part of the `miniorch-images` crate: `miniorch/build.rs` (which embeds the result) and
//! tests that need the images include this file with `#[path]`, so both build them the same way
//! and share one target directory. std only, since build scripts and tests include it.

#![allow(dead_code)] // Each includer uses a different part.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries built, one per image.
pub const BINARIES: [&str; 2] = ["pause", "demo"];

/// Environment variable naming the nested build's target directory, instead of
/// [`default_target_dir`].
pub const TARGET_DIR_ENV: &str = "MINIORCH_IMAGES_TARGET_DIR";

/// `<workspace>/target/images`: beside the outer build's directories (whose locks it never
/// takes), shared by every outer target directory so the binaries are built once.
pub fn default_target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("images")
}

/// The target directory to use: `$MINIORCH_IMAGES_TARGET_DIR`, or [`default_target_dir`].
pub fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os(TARGET_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default_target_dir(workspace),
    }
}

/// What the nested build needs to know.
pub struct StaticBuild<'a> {
    /// The workspace root (holding `Cargo.toml` and `images/`).
    pub workspace: &'a Path,
    /// The nested build's target directory.
    pub target_dir: &'a Path,
    /// The target triple the binaries are for (the machine Docker runs on).
    pub target: &'a str,
    /// The cargo to run (`$CARGO` in build scripts and tests).
    pub cargo: &'a Path,
    /// The rustc to use (`$RUSTC` in build scripts), so both builds use the same compiler.
    pub rustc: Option<&'a Path>,
}

/// Environment variables the nested cargo keeps; everything else from the outer cargo (its
/// RUSTFLAGS, wrappers, jobserver, target directory, `CARGO_*` settings) is dropped.
const KEPT_ENV: [&str; 11] = [
    "PATH",
    "HOME",
    "USER",
    "TMPDIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
];

impl StaticBuild<'_> {
    /// Runs the nested build and returns the path of each binary of [`BINARIES`], checked to be
    /// static; the error says what failed, with cargo's output.
    pub fn run(&self) -> Result<Vec<PathBuf>, String> {
        let mut cmd = Command::new(self.cargo);
        cmd.env_clear();
        for name in KEPT_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if let Some(rustc) = self.rustc {
            cmd.env("RUSTC", rustc);
        }
        // With an explicit --target these flags reach only the target's artifacts, never build
        // scripts or proc macros (which cannot be static).
        cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
            .env("CARGO_TERM_COLOR", "never")
            .env("CARGO_TERM_PROGRESS_WHEN", "never")
            .arg("build")
            .arg("--release")
            .arg("--locked")
            .arg("--manifest-path")
            .arg(self.workspace.join("Cargo.toml"))
            .args(["-p", "miniorch-images", "--bins", "--target", self.target])
            .arg("--target-dir")
            .arg(self.target_dir);
        let output = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.cargo.display()))?;
        if !output.status.success() {
            return Err(format!(
                "the static build of miniorch's images failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let dir = self.target_dir.join(self.target).join("release");
        let mut paths = Vec::new();
        for name in BINARIES {
            let path = dir.join(name);
            check_static(&path)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// Checks that `path` is an ELF executable that needs no dynamic loader (no `PT_INTERP`
/// program header), so it runs alone in a `FROM scratch` image.
pub fn check_static(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match elf_interpreter(&bytes) {
        Ok(None) => Ok(()),
        Ok(Some(interp)) => Err(format!(
            "{} is dynamically linked (it needs the loader {interp}), so it cannot run in a \
             FROM scratch image; the static C runtime of the target (for glibc: the libc6-dev \
             static libraries) must be installed",
            path.display()
        )),
        Err(e) => Err(format!(
            "{} is not a usable executable: {e}",
            path.display()
        )),
    }
}

/// The ELF interpreter an executable asks for, if any.
pub fn elf_interpreter(bytes: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 0x34 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let wide = match bytes[4] {
        1 => false,
        2 => true,
        _ => return Err("unknown ELF class".into()),
    };
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("unknown ELF byte order".into()),
    };
    let read = |offset: usize, len: usize| -> Result<u64, String> {
        let field = bytes
            .get(offset..offset.saturating_add(len))
            .ok_or_else(|| "truncated ELF file".to_string())?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little { field[len - 1 - i] } else { field[i] };
            value = (value << 8) | u64::from(byte);
        }
        Ok(value)
    };
    let (phoff, phentsize, phnum) = if wide {
        (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?)
    } else {
        (read(0x1c, 4)?, read(0x2a, 2)?, read(0x2c, 2)?)
    };
    for i in 0..phnum {
        let header = i
            .checked_mul(phentsize)
            .and_then(|rel| rel.checked_add(phoff))
            .and_then(|at| usize::try_from(at).ok())
            .ok_or_else(|| "bad ELF program header offset".to_string())?;
        if read(header, 4)? != u64::from(PT_INTERP) {
            continue;
        }
        let (offset, size) = if wide {
            (
                read(header.saturating_add(0x08), 8)?,
                read(header.saturating_add(0x20), 8)?,
            )
        } else {
            (
                read(header.saturating_add(0x04), 4)?,
                read(header.saturating_add(0x10), 4)?,
            )
        };
        let start = usize::try_from(offset).map_err(|e| e.to_string())?;
        let len = usize::try_from(size).map_err(|e| e.to_string())?;
        let name = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| "truncated ELF interpreter".to_string())?;
        let name = String::from_utf8_lossy(name);
        return Ok(Some(name.trim_end_matches('\0').to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_is_dynamic_and_garbage_is_not_elf() {
        // /bin/sh is a dynamically linked executable on every machine this builds on.
        let sh = std::fs::read("/bin/sh").expect("read /bin/sh");
        let interp = elf_interpreter(&sh).expect("parse /bin/sh");
        assert!(interp.is_some_and(|i| i.contains("ld-")), "/bin/sh");
        assert!(check_static(Path::new("/bin/sh")).is_err());
        for bad in [
            &b""[..],
            b"#!/bin/sh\n",
            b"\x7fELF\x02\x01",
            &[
                0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x3e, 0, 1, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0x38, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0,
            ][..],
        ] {
            assert!(elf_interpreter(bad).is_err(), "{bad:?}");
        }
    }
}
