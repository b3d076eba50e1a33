//! `mctl get`: lists and objects as kubectl prints them, from the server's Tables.

use futures::{AsyncBufReadExt, StreamExt};
use http::{Request, header};
use serde_json::{Value, json};

use crate::api::{ACCEPT_TABLE, Ctx, encode, server_error};
use crate::output::{self, Format, TableOpts};
use crate::resources::ApiResource;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource type (pods, po, nodes, ...) or TYPE/NAME.
    pub resource: String,
    /// Names of the objects to show (all if none).
    pub names: Vec<String>,
    /// Output format: wide, yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector (e.g. app=web,tier!=db).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector (e.g. status.phase=Running).
    #[arg(long)]
    pub field_selector: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Show labels as the last column.
    #[arg(long)]
    pub show_labels: bool,
    /// Leave out the header line.
    #[arg(long)]
    pub no_headers: bool,
}

pub async fn run(ctx: &Ctx, mut args: Args) -> anyhow::Result<()> {
    if let Some((kind, name)) = args.resource.clone().split_once('/') {
        args.resource = kind.to_string();
        args.names.insert(0, name.to_string());
    }
    let resources = ctx.resources().await?;
    let r = resources
        .find(&args.resource)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the server doesn't have a resource type {:?}",
                args.resource
            )
        })?
        .clone();
    let format = Format::parse(args.output.as_deref())?;
    let ns = (r.namespaced && !args.all_namespaces).then(|| ctx.namespace.clone());
    let opts = TableOpts {
        wide: format == Format::Wide,
        namespace: r.namespaced && args.all_namespaces,
        labels: args.show_labels,
        headers: !args.no_headers,
    };
    let table = matches!(format, Format::Table | Format::Wide);

    if !args.names.is_empty() {
        let mut failed = None;
        let mut objects = Vec::new();
        for name in &args.names {
            let path = r.path(ns.as_deref(), Some(name));
            let got = if table {
                ctx.get_table(&path).await
            } else {
                ctx.get(&path).await
            };
            match got {
                Ok(v) => objects.push(v),
                Err(e) => {
                    eprintln!("{}", crate::api::ServerError::describe(&e));
                    failed = Some(e);
                }
            }
        }
        print(&r, format, opts, &objects, true)?;
        if args.watch {
            watch(ctx, &r, ns.as_deref(), &args, opts, &objects).await?;
        }
        return match failed {
            Some(_) => Err(anyhow::anyhow!(crate::api::Reported)),
            None => Ok(()),
        };
    }

    let mut query = Vec::new();
    if let Some(s) = &args.selector {
        query.push(format!("labelSelector={}", encode(s)));
    }
    if let Some(s) = &args.field_selector {
        query.push(format!("fieldSelector={}", encode(s)));
    }
    let mut path = r.path(ns.as_deref(), None);
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let list = if table {
        ctx.get_table(&path).await?
    } else {
        ctx.get(&path).await?
    };
    let empty = list_items(&list, table).is_empty();
    if empty && !args.watch && !matches!(format, Format::Yaml | Format::Json) {
        match ns.as_deref() {
            Some(n) => eprintln!("No resources found in {n} namespace."),
            None => eprintln!("No resources found"),
        }
        return Ok(());
    }
    print(&r, format, opts, std::slice::from_ref(&list), false)?;
    if args.watch {
        watch(
            ctx,
            &r,
            ns.as_deref(),
            &args,
            opts,
            std::slice::from_ref(&list),
        )
        .await?;
    }
    Ok(())
}

fn list_items(list: &Value, table: bool) -> Vec<Value> {
    let key = if table { "rows" } else { "items" };
    list[key].as_array().cloned().unwrap_or_default()
}

/// Prints what was fetched: Tables as aligned text, objects as YAML/JSON/names.
fn print(
    r: &ApiResource,
    format: Format,
    opts: TableOpts,
    fetched: &[Value],
    named: bool,
) -> anyhow::Result<()> {
    match format {
        Format::Table | Format::Wide => output::print_aligned(&output::table_lines(fetched, opts)),
        Format::Name => {
            for v in fetched {
                let items = if named {
                    vec![v.clone()]
                } else {
                    list_items(v, false)
                };
                for o in items {
                    println!(
                        "{}/{}",
                        r.kind_ref(),
                        o["metadata"]["name"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Format::Yaml | Format::Json => {
            let doc = if named && fetched.len() == 1 {
                fetched[0].clone()
            } else {
                let items: Vec<Value> = if named {
                    fetched.to_vec()
                } else {
                    fetched.iter().flat_map(|l| list_items(l, false)).collect()
                };
                json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
            };
            if format == Format::Yaml {
                output::print_yaml(&doc)
            } else {
                output::print_json(&doc)
            }
        }
    }
}

/// `-w`: follow the watch from where the listing ended, printing each change as a row.
async fn watch(
    ctx: &Ctx,
    r: &ApiResource,
    ns: Option<&str>,
    args: &Args,
    opts: TableOpts,
    fetched: &[Value],
) -> anyhow::Result<()> {
    let rv = fetched
        .last()
        .and_then(|v| v["metadata"]["resourceVersion"].as_str())
        .unwrap_or("0")
        .to_string();
    let mut query = vec!["watch=true".to_string()];
    if args.names.len() == 1 {
        query.push(format!(
            "fieldSelector={}",
            encode(&format!("metadata.name={}", args.names[0]))
        ));
        query.push("resourceVersion=0".into());
    } else {
        query.push(format!("resourceVersion={rv}"));
        if let Some(s) = &args.selector {
            query.push(format!("labelSelector={}", encode(s)));
        }
        if let Some(s) = &args.field_selector {
            query.push(format!("fieldSelector={}", encode(s)));
        }
    }
    let path = format!("{}?{}", r.path(ns, None), query.join("&"));
    let format = Format::parse(args.output.as_deref())?;
    let accept = if matches!(format, Format::Table | Format::Wide) {
        ACCEPT_TABLE
    } else {
        "application/json"
    };
    let req = Request::get(&path)
        .header(header::ACCEPT, accept)
        .body(Vec::new())?;
    let stream = ctx.client.request_stream(req).await.map_err(server_error)?;
    let mut lines = stream.lines();
    let mut skip_first = args.names.len() == 1;
    let widths = column_widths(&output::table_lines(fetched, opts));
    while let Some(line) = lines.next().await {
        let line = line?;
        let event: Value = serde_json::from_str(&line)?;
        if event["type"] == "ERROR" {
            anyhow::bail!(
                "watch ended: {}",
                event["object"]["message"]
                    .as_str()
                    .unwrap_or("unknown error")
            );
        }
        if event["type"] == "BOOKMARK" {
            continue;
        }
        // A named watch starts with the object as it is, already printed.
        if std::mem::take(&mut skip_first) {
            continue;
        }
        let obj = &event["object"];
        match format {
            Format::Table | Format::Wide => {
                for l in output::table_lines(
                    std::slice::from_ref(obj),
                    TableOpts {
                        headers: false,
                        ..opts
                    },
                ) {
                    println!("{}", pad_to(&l, &widths));
                }
            }
            _ => print(r, format, opts, std::slice::from_ref(obj), true)?,
        }
    }
    Ok(())
}

/// Column widths of already printed lines (tabwriter: width + 3, at least 6).
fn column_widths(lines: &[String]) -> Vec<usize> {
    let mut w: Vec<usize> = Vec::new();
    for l in lines {
        for (i, c) in l.split('\t').enumerate() {
            if w.len() <= i {
                w.push(6);
            }
            w[i] = w[i].max(c.chars().count() + 3);
        }
    }
    w
}

fn pad_to(line: &str, widths: &[usize]) -> String {
    let cells: Vec<&str> = line.split('\t').collect();
    let last = cells.len().saturating_sub(1);
    cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == last {
                c.to_string()
            } else {
                format!(
                    "{c:<width$}",
                    width = widths
                        .get(i)
                        .copied()
                        .unwrap_or(c.len() + 3)
                        .max(c.len() + 3)
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_rows_line_up_with_the_listing() {
        let w = column_widths(&["NAME\tREADY\tSTATUS".into(), "web\t1/1\tRunning".into()]);
        assert_eq!(w, vec![7, 8, 10]);
        assert_eq!(pad_to("web\t0/1\tPending", &w), "web    0/1     Pending");
    }
}
