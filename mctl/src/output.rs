//! Printing as kubectl prints: tab-aligned tables (minimum width 6, padding 3), YAML and JSON
//! with sorted keys, and the `-o` choices.

use std::io::Write;

use serde_json::Value;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl Format {
    pub fn parse(o: Option<&str>) -> anyhow::Result<Self> {
        Ok(match o {
            None | Some("") => Format::Table,
            Some("wide") => Format::Wide,
            Some("yaml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("name") => Format::Name,
            Some(other) => anyhow::bail!(
                "unable to match a printer suitable for the output format {other:?}, allowed formats are: json,name,wide,yaml"
            ),
        })
    }
}

/// How to print a server-side Table.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOpts {
    pub wide: bool,
    pub namespace: bool,
    pub labels: bool,
    pub headers: bool,
}

/// Rows of Tables as text lines (cells separated by tabs), headers first if asked.
pub fn table_lines(tables: &[Value], opts: TableOpts) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(first) = tables.first() else {
        return lines;
    };
    let columns: Vec<(usize, String)> = first["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| opts.wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, c)| (i, c["name"].as_str().unwrap_or_default().to_uppercase()))
        .collect();
    if opts.headers {
        let mut h: Vec<String> = Vec::new();
        if opts.namespace {
            h.push("NAMESPACE".into());
        }
        h.extend(columns.iter().map(|(_, n)| n.clone()));
        if opts.labels {
            h.push("LABELS".into());
        }
        lines.push(h.join("\t"));
    }
    for t in tables {
        for row in t["rows"].as_array().into_iter().flatten() {
            let cells = row["cells"].as_array().cloned().unwrap_or_default();
            let meta = &row["object"]["metadata"];
            let mut out: Vec<String> = Vec::new();
            if opts.namespace {
                out.push(meta["namespace"].as_str().unwrap_or_default().to_string());
            }
            for (i, _) in &columns {
                out.push(cell_text(cells.get(*i).unwrap_or(&Value::Null)));
            }
            if opts.labels {
                out.push(labels_text(&meta["labels"]));
            }
            lines.push(out.join("\t"));
        }
    }
    lines
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// `k=v,k2=v2` (sorted), or `<none>`.
pub fn labels_text(labels: &Value) -> String {
    match labels.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

/// Writes tab-separated lines aligned as kubectl's tabwriter does (cells padded by 3, columns at
/// least 6 wide; this crate counts the minimum before padding, Go's after).
pub fn print_aligned(lines: &[String]) -> anyhow::Result<()> {
    let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock())
        .minwidth(3)
        .padding(3);
    for l in lines {
        writeln!(tw, "{l}")?;
    }
    tw.flush()?;
    Ok(())
}

pub fn print_yaml(v: &Value) -> anyhow::Result<()> {
    let text = serde_saphyr::to_string(v).map_err(|e| anyhow::anyhow!("cannot print YAML: {e}"))?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    serde::Serialize::serialize(v, &mut ser)?;
    println!("{}", String::from_utf8_lossy(&buf));
    Ok(())
}

/// A time as `kubectl describe` prints it: `Sun, 22 Nov 2026 04:15:49 +0000`.
pub fn describe_time(s: &str) -> String {
    match s.parse::<jiff::Timestamp>() {
        Ok(t) => t.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string(),
        Err(_) => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_hide_wide_columns_and_add_namespace_and_labels() {
        let t = json!({"columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "Ready", "priority": 0}, {"name": "IP", "priority": 1}],
            "rows": [{"cells": ["web", "1/1", "10.0.0.1"], "object": {"metadata": {"namespace": "default", "labels": {"app": "web", "a": "b"}}}}]});
        let lines = table_lines(
            &[t.clone()],
            TableOpts {
                headers: true,
                ..Default::default()
            },
        );
        assert_eq!(lines, vec!["NAME\tREADY", "web\t1/1"]);
        let lines = table_lines(
            &[t],
            TableOpts {
                headers: true,
                wide: true,
                namespace: true,
                labels: true,
            },
        );
        assert_eq!(
            lines,
            vec![
                "NAMESPACE\tNAME\tREADY\tIP\tLABELS",
                "default\tweb\t1/1\t10.0.0.1\ta=b,app=web"
            ]
        );
    }

    #[test]
    fn formats() {
        assert_eq!(Format::parse(Some("wide")).unwrap(), Format::Wide);
        assert!(Format::parse(Some("xml")).is_err());
        assert_eq!(
            describe_time("2026-11-22T04:15:49Z"),
            "Sun, 22 Nov 2026 04:15:49 +0000"
        );
    }
}
