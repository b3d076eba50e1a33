//! `mctl delete TYPE NAME...`: deletes and, like kubectl, waits until the objects are gone.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::api::{Ctx, Reported, ServerError, is_not_found};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource type (pods, po, nodes, ...) or TYPE/NAME.
    pub resource: String,
    /// Names of the objects to delete.
    pub names: Vec<String>,
    /// Seconds the object has to stop gracefully (0 with --force deletes at once).
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// Delete at once without waiting for the agent to confirm the pod stopped.
    #[arg(long)]
    pub force: bool,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub wait: bool,
}

pub async fn run(ctx: &Ctx, mut args: Args) -> anyhow::Result<()> {
    if let Some((kind, name)) = args.resource.clone().split_once('/') {
        args.resource = kind.to_string();
        args.names.insert(0, name.to_string());
    }
    if args.names.is_empty() {
        anyhow::bail!(
            "resource(s) were provided, but no name was specified: say which {} to delete",
            args.resource
        );
    }
    let r = ctx
        .resources()
        .await?
        .find(&args.resource)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the server doesn't have a resource type {:?}",
                args.resource
            )
        })?
        .clone();
    let grace = if args.force {
        Some(args.grace_period.unwrap_or(0))
    } else {
        args.grace_period
    };
    let mut body =
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
    if let Some(g) = grace {
        body["gracePeriodSeconds"] = json!(g);
    }
    let ns = ctx.namespace.clone();
    let mut failed = false;
    let mut deleted = Vec::new();
    for name in &args.names {
        let path = r.path(Some(&ns), Some(name));
        match ctx
            .request(
                Method::DELETE,
                &path,
                "application/json",
                Some("application/json"),
                serde_json::to_vec(&body)?,
            )
            .await
        {
            Ok(_) => {
                println!("{} {name:?} deleted", r.kind_ref());
                deleted.push(path);
            }
            Err(e) => {
                eprintln!("{}", ServerError::describe(&e));
                failed = true;
            }
        }
    }
    if args.wait {
        for path in deleted {
            wait_gone(ctx, &path).await?;
        }
    }
    if failed {
        Err(anyhow::anyhow!(Reported))
    } else {
        Ok(())
    }
}

/// Polls until the object is gone (404).
async fn wait_gone(ctx: &Ctx, path: &str) -> anyhow::Result<()> {
    loop {
        match ctx.get(path).await {
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
