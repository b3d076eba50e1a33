//! Leases (coordination.k8s.io/v1): node heartbeats and leader election.

use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::registry::{Column, Kind};
use crate::table;

impl Kind for Lease {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "lease";

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(spec) = &self.spec {
            if let Some(d) = spec.lease_duration_seconds
                && d <= 0
            {
                errs.push(FieldError::invalid(
                    "spec.leaseDurationSeconds",
                    d,
                    "must be greater than 0",
                ));
            }
            if let Some(t) = spec.lease_transitions
                && t < 0
            {
                errs.push(FieldError::invalid(
                    "spec.leaseTransitions",
                    t,
                    "must be greater than or equal to 0",
                ));
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new("Holder", "string", "The holder of the lease"),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let holder = self
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(holder),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}
