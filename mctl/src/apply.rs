//! `mctl apply -f FILE`: creates or updates every object in the files by server-side apply,
//! printing `pod/web created|configured|unchanged` as kubectl does.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use http::Method;
use serde_json::Value;

use crate::api::{Ctx, Reported, ServerError, is_not_found};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// File, directory or `-` (stdin) holding YAML or JSON manifests.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// One manifest document and where it came from.
struct Doc {
    source: String,
    object: Value,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let mut docs = Vec::new();
    for f in &args.files {
        for path in expand(f)? {
            docs.extend(read_docs(&path)?);
        }
    }
    if docs.is_empty() {
        anyhow::bail!("no objects passed to apply");
    }
    let mut failed = false;
    for doc in docs {
        match apply_one(ctx, &doc).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("{}", ServerError::describe(&e));
                failed = true;
            }
        }
    }
    if failed {
        Err(anyhow::anyhow!(Reported))
    } else {
        Ok(())
    }
}

/// A path as the files to read: itself, or the manifests in a directory.
fn expand(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.as_os_str() == "-" || !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read directory {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_docs(path: &Path) -> anyhow::Result<Vec<Doc>> {
    let (source, text) = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        ("STDIN".to_string(), s)
    } else {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "the path {:?} does not exist or cannot be read",
                path.display().to_string()
            )
        })?;
        (path.display().to_string(), text)
    };
    let values = parse(&text).with_context(|| format!("error parsing {source}"))?;
    let mut docs = Vec::new();
    for v in values {
        match v {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && m.contains_key("items") =>
            {
                for item in m["items"].as_array().into_iter().flatten() {
                    docs.push(Doc {
                        source: source.clone(),
                        object: item.clone(),
                    });
                }
            }
            Value::Object(_) => docs.push(Doc {
                source: source.clone(),
                object: v,
            }),
            other => {
                anyhow::bail!("error parsing {source}: a manifest must be a mapping, got {other}")
            }
        }
    }
    Ok(docs)
}

/// JSON, or one or more YAML documents.
pub fn parse(text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("the JSON is not valid: {e}"))?;
        return Ok(vec![v]);
    }
    serde_saphyr::from_multiple::<Value>(text)
        .map_err(|e| anyhow::anyhow!("the YAML is not valid: {e}"))
}

async fn apply_one(ctx: &Ctx, doc: &Doc) -> anyhow::Result<String> {
    let obj = &doc.object;
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let mut missing = Vec::new();
    if api_version.is_empty() {
        missing.push("apiVersion not set");
    }
    if kind.is_empty() {
        missing.push("kind not set");
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "error validating {:?}: error validating data: [{}]",
            doc.source,
            missing.join(", ")
        );
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let resources = ctx.resources().await?;
    let r = resources.by_kind(api_version, kind).ok_or_else(|| {
        anyhow::anyhow!(
            "resource mapping not found for name: {name:?} namespace: {:?} from {:?}: no matches for kind {kind:?} in version {api_version:?}",
            obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            doc.source
        )
    })?;
    if name.is_empty() {
        anyhow::bail!(
            "error when retrieving current configuration of {} from {:?}: the object has no metadata.name",
            r.kind_ref(),
            doc.source
        );
    }
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| ctx.namespace.clone());
    let path = r.path(Some(&ns), Some(name));
    let before = match ctx.get(&path).await {
        Ok(v) => Some(
            v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    let body = serde_json::to_vec(obj)?;
    let after = ctx
        .request(
            Method::PATCH,
            &format!("{path}?fieldManager=mctl&force=true&fieldValidation=Strict"),
            "application/json",
            Some("application/apply-patch+yaml"),
            body,
        )
        .await?;
    let rv = after["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    let verb = match before {
        None => "created",
        Some(old) if old == rv => "unchanged",
        Some(_) => "configured",
    };
    Ok(format!("{}/{name} {verb}", r.kind_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml() {
        let docs = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n").unwrap();
        let names: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let err = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n").unwrap_err();
        assert!(
            err.to_string().starts_with("the YAML is not valid"),
            "{err}"
        );
        assert!(
            parse("{\"a\": ")
                .unwrap_err()
                .to_string()
                .starts_with("the JSON is not valid")
        );
    }
}
