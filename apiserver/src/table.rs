//! Server-side Tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), the shape
//! kubectl prints `get` from. Each row carries the object's metadata so kubectl can add
//! NAMESPACE, LABELS and `-L` columns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::registry::Kind;

/// What each row's `object` holds (`includeObject=` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// `Age` cell text.
pub fn age(t: Option<&Time>, now: jiff::Timestamp) -> String {
    miniorch_api::format::age(t.map(|t| t.0), now)
}

/// A Table of `objects` at `resource_version`. `headers` false leaves out the column
/// definitions (later events of a watch).
pub fn build<K: Kind>(
    objects: &[K],
    resource_version: &str,
    include: IncludeObject,
    headers: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": o.cells(now) });
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.metadata(),
                    });
                }
                IncludeObject::Object => {
                    row["object"] = serde_json::to_value(o).unwrap_or(Value::Null)
                }
            }
            row
        })
        .collect();
    let columns = if headers {
        serde_json::to_value(K::columns()).unwrap_or(Value::Null)
    } else {
        json!([])
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": columns,
        "rows": rows,
    })
}
