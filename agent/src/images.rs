//! miniorch's own images (`miniorch/pause`, `miniorch/demo`) made from static binaries without
//! any registry: a Docker build whose in-memory context holds a `FROM scratch` Dockerfile and
//! the binary. The images are labelled so the agent never tries to pull them and so a stale
//! one (from another miniorch build) is rebuilt.
//!
//! The binaries are embedded by the `miniorch` binary (see `miniorch/src/images.rs`); this
//! module only needs their bytes, so tests can pass binaries they built themselves.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures::TryStreamExt;

/// The sandbox image every pod starts with.
pub const PAUSE_IMAGE: &str = "miniorch/pause:latest";
/// The demo workload image.
pub const DEMO_IMAGE: &str = "miniorch/demo:latest";
/// Label on images miniorch builds; its value is the image's short name.
pub const IMAGE_LABEL: &str = "io.miniorch.image";
/// Label holding a fingerprint of the binary inside, to notice stale images.
pub const FINGERPRINT_LABEL: &str = "io.miniorch.image.fingerprint";

/// An image made of one static binary.
#[derive(Debug, Clone, Copy)]
pub struct LocalImage<'a> {
    /// Full name with tag, e.g. [`PAUSE_IMAGE`].
    pub name: &'a str,
    /// The binary's file name inside the image (`/<binary_name>`); also the label value.
    pub binary_name: &'a str,
    /// The static executable.
    pub binary: &'a [u8],
    /// Default arguments after the binary (the Dockerfile's `CMD`).
    pub default_args: &'a [&'a str],
}

/// Why an image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Docker refused or failed.
    #[error("building image {image}: {source}")]
    Docker {
        /// The image.
        image: String,
        /// Docker's error.
        source: bollard::errors::Error,
    },
    /// The build context could not be assembled.
    #[error("packing the build context of {image}: {source}")]
    Context {
        /// The image.
        image: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A fingerprint of `binary`, stable for the same bytes within one miniorch build.
pub fn fingerprint(binary: &[u8]) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    binary.hash(&mut hasher);
    format!("{:016x}-{}", hasher.finish(), binary.len())
}

/// The Dockerfile of an image.
pub fn dockerfile(image: &LocalImage<'_>) -> String {
    let args: Vec<String> = image
        .default_args
        .iter()
        .map(|a| serde_json::Value::from(*a).to_string())
        .collect();
    let mut text = format!(
        "FROM scratch\nCOPY {name} /{name}\nENTRYPOINT [\"/{name}\"]\n",
        name = image.binary_name
    );
    if !args.is_empty() {
        text.push_str(&format!("CMD [{}]\n", args.join(", ")));
    }
    text
}

/// The build context: a tar holding the Dockerfile and the binary.
pub fn build_context(image: &LocalImage<'_>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, data)
    };
    add("Dockerfile", 0o644, dockerfile(image).as_bytes())?;
    add(image.binary_name, 0o755, image.binary)?;
    tar.into_inner()
}

/// Builds each image that is missing or holds another binary (all of them if `force`), and
/// returns the names built.
pub async fn ensure_images(
    docker: &Docker,
    images: &[LocalImage<'_>],
    force: bool,
) -> Result<Vec<String>, ImageError> {
    let mut built = Vec::new();
    for image in images {
        let want = fingerprint(image.binary);
        let existing = docker.inspect_image(image.name).await.ok();
        let current = existing
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(FINGERPRINT_LABEL))
            .is_some_and(|f| *f == want);
        if current && !force {
            continue;
        }
        build(docker, image, &want).await?;
        tracing::info!(image = image.name, "loaded image");
        built.push(image.name.to_string());
        // The image it replaced is now untagged; drop it unless a container or another tag
        // still uses it (Docker refuses then). A forced rebuild of the same content gives the
        // same image, which must stay.
        let new = docker
            .inspect_image(image.name)
            .await
            .ok()
            .and_then(|i| i.id);
        if let Some(old) = existing
            .and_then(|i| i.id)
            .filter(|old| Some(old) != new.as_ref())
        {
            let options = RemoveImageOptionsBuilder::new().build();
            let _ = docker.remove_image(&old, Some(options), None).await;
        }
    }
    Ok(built)
}

async fn build(
    docker: &Docker,
    image: &LocalImage<'_>,
    fingerprint: &str,
) -> Result<(), ImageError> {
    let context = build_context(image).map_err(|source| ImageError::Context {
        image: image.name.to_string(),
        source,
    })?;
    let labels = HashMap::from([
        (IMAGE_LABEL, image.binary_name),
        (FINGERPRINT_LABEL, fingerprint),
    ]);
    let options = BuildImageOptionsBuilder::new()
        .t(image.name)
        .labels(&labels)
        .rm(true)
        .forcerm(true)
        .build();
    docker
        .build_image(options, None, Some(bollard::body_full(context.into())))
        .try_for_each(|_| async { Ok(()) })
        .await
        .map_err(|source| ImageError::Docker {
            image: image.name.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfiles_and_contexts() {
        let demo = LocalImage {
            name: DEMO_IMAGE,
            binary_name: "demo",
            binary: b"\x7fELF...",
            default_args: &["serve"],
        };
        assert_eq!(
            dockerfile(&demo),
            "FROM scratch\nCOPY demo /demo\nENTRYPOINT [\"/demo\"]\nCMD [\"serve\"]\n"
        );
        let pause = LocalImage {
            name: PAUSE_IMAGE,
            binary_name: "pause",
            binary: b"x",
            default_args: &[],
        };
        assert_eq!(
            dockerfile(&pause),
            "FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n"
        );

        let context = build_context(&demo).unwrap();
        let mut archive = tar::Archive::new(&context[..]);
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.size(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("Dockerfile".into(), 0o644, dockerfile(&demo).len() as u64),
                ("demo".into(), 0o755, 7)
            ]
        );
    }

    #[test]
    fn fingerprints_tell_binaries_apart() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }
}
