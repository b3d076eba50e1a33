//! Talking to the apiserver: the client, raw JSON requests, and server errors printed the way
//! kubectl prints them.

use std::path::Path;

use anyhow::Context;
use http::{Method, Request, header};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::resources::Resources;

/// `Accept` for a server-side Table, falling back to plain JSON.
pub const ACCEPT_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// A failure the server reported, formatted as kubectl does.
#[derive(Debug)]
pub struct ServerError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// For `Invalid`: the kind, name and (field, message) of each invalid field.
    pub invalid: Option<(String, String, Vec<(String, String)>)>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((kind, name, causes)) = self.invalid.as_ref().filter(|(_, _, c)| !c.is_empty())
        {
            // kubectl's form: one cause inline, several as a bulleted list.
            write!(f, "The {kind} {name:?} is invalid: ")?;
            if let [(field, msg)] = causes.as_slice() {
                return write!(f, "{field}: {msg}");
            }
            for (field, msg) in causes {
                write!(f, "\n* {field}: {msg}")?;
            }
            Ok(())
        } else if self.reason == "Invalid" {
            write!(f, "{}", self.message)
        } else {
            let reason = if self.reason.is_empty() {
                "InternalError"
            } else {
                &self.reason
            };
            write!(f, "Error from server ({reason}): {}", self.message)
        }
    }
}

impl std::error::Error for ServerError {}

impl ServerError {
    /// How an error from a request reads on the terminal (kubectl's form for server errors).
    pub fn describe(e: &anyhow::Error) -> String {
        match e.downcast_ref::<ServerError>() {
            Some(s) => s.to_string(),
            None => format!("error: {e:#}"),
        }
    }
}

/// An error already printed to stderr; the command only has to fail.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(reported above)")
    }
}

impl std::error::Error for Reported {}

/// What every command needs: a client, the namespace, and discovery (fetched once, on demand).
pub struct Ctx {
    pub client: kube::Client,
    pub namespace: String,
    resources: OnceCell<Resources>,
}

impl Ctx {
    pub async fn connect(
        kubeconfig: Option<&Path>,
        namespace: Option<String>,
    ) -> anyhow::Result<Self> {
        let path = miniorch_api::client::find_kubeconfig(kubeconfig)?;
        let config = miniorch_api::client::from_kubeconfig_file(&path).await?;
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        let client = miniorch_api::client::build(config, "mctl")?;
        Ok(Ctx {
            client,
            namespace,
            resources: OnceCell::new(),
        })
    }

    pub async fn resources(&self) -> anyhow::Result<&Resources> {
        self.resources
            .get_or_try_init(|| Resources::discover(self))
            .await
    }

    /// Sends a request and returns the body as JSON; a failure Status becomes a [`ServerError`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, accept);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(body).context("building the request")?;
        let text = self.client.request_text(req).await.map_err(server_error)?;
        serde_json::from_str(&text)
            .with_context(|| format!("the server's answer to {path} is not JSON"))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, "application/json", None, Vec::new())
            .await
    }

    pub async fn get_table(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, ACCEPT_TABLE, None, Vec::new())
            .await
    }
}

/// Turns a client error into a [`ServerError`] when the server answered with a Status.
pub fn server_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => {
            let invalid = (s.reason == "Invalid")
                .then_some(s.details.as_ref())
                .flatten()
                .map(|d| {
                    let causes = d
                        .causes
                        .iter()
                        .map(|c| (c.field.clone(), c.message.clone()))
                        .collect();
                    (d.kind.clone(), d.name.clone(), causes)
                });
            anyhow::Error::new(ServerError {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                invalid,
            })
        }
        other => anyhow::Error::new(other)
            .context("cannot reach the apiserver (is the cluster up? try `miniorch status`)"),
    }
}

/// True when `e` is the server saying 404.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ServerError>()
        .is_some_and(|s| s.code == 404)
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
