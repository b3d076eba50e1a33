//! Events (core/v1): what components did and why, shown by `kubectl describe` and
//! `kubectl get events`.

use k8s_openapi::api::core::v1::Event;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::registry::{Column, Kind};

impl Kind for Event {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "event";
    const SHORT_NAMES: &'static [&'static str] = &["ev"];
    const FIELDS: &'static [&'static str] = &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];

    fn field(&self, field: &str) -> Option<String> {
        let o = &self.involved_object;
        match field {
            "involvedObject.kind" => o.kind.clone(),
            "involvedObject.namespace" => o.namespace.clone(),
            "involvedObject.name" => o.name.clone(),
            "involvedObject.uid" => o.uid.clone(),
            "involvedObject.apiVersion" => o.api_version.clone(),
            "involvedObject.resourceVersion" => o.resource_version.clone(),
            "involvedObject.fieldPath" => o.field_path.clone(),
            "reason" => self.reason.clone(),
            "reportingComponent" => self.reporting_component.clone(),
            "source" => self.source.as_ref().and_then(|s| s.component.clone()),
            "type" => self.type_.clone(),
            _ => None,
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(t) = self.type_.as_deref()
            && !matches!(t, "Normal" | "Warning")
        {
            errs.push(FieldError::not_supported("type", t, &["Normal", "Warning"]));
        }
        let ns = self.metadata.namespace.as_deref().unwrap_or("");
        if let Some(ons) = self
            .involved_object
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            && ons != ns
        {
            errs.push(FieldError::invalid(
                "involvedObject.namespace",
                ons,
                "does not match event.namespace",
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::new(
                "Last Seen",
                "string",
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            Column::new("Type", "string", "Type of this event (Normal, Warning)."),
            Column::new(
                "Reason",
                "string",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            Column::new("Object", "string", "The object that this event is about."),
            Column::new(
                "Subobject",
                "string",
                "The field of the object this event is about.",
            )
            .wide(),
            Column::new("Source", "string", "The component reporting this event.").wide(),
            Column::new(
                "Message",
                "string",
                "A human-readable description of the status of this operation.",
            ),
            Column::new(
                "First Seen",
                "string",
                "The time at which the event was first recorded.",
            )
            .wide(),
            Column::new(
                "Count",
                "string",
                "The number of times this event has occurred.",
            )
            .wide(),
            Column {
                format: "name",
                ..Column::new("Name", "string", "Name must be unique within a namespace.").wide()
            },
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let last = self
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| self.event_time.as_ref().map(|t| t.0))
            .or_else(|| self.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let first = self.first_timestamp.as_ref().map(|t| t.0).or(last);
        let o = &self.involved_object;
        let object = format!(
            "{}/{}",
            o.kind.clone().unwrap_or_default().to_lowercase(),
            o.name.clone().unwrap_or_default()
        );
        let source = match &self.source {
            Some(s) => match (&s.component, &s.host) {
                (Some(c), Some(h)) if !h.is_empty() => format!("{c}, {h}"),
                (Some(c), _) => c.clone(),
                _ => self.reporting_component.clone().unwrap_or_default(),
            },
            None => self.reporting_component.clone().unwrap_or_default(),
        };
        let age = |t| miniorch_api::format::age(t, now);
        vec![
            json!(age(last)),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.reason.clone().unwrap_or_default()),
            json!(object),
            json!(o.field_path.clone().unwrap_or_default()),
            json!(source),
            json!(self.message.clone().unwrap_or_default().trim()),
            json!(age(first)),
            json!(self.count.unwrap_or(1).to_string()),
            json!(self.metadata.name.clone().unwrap_or_default()),
        ]
    }
}
