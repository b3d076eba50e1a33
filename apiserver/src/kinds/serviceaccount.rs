//! ServiceAccounts (core/v1): only the shared object-meta rules apply, as upstream; the
//! `kubectl get serviceaccounts` columns count the listed secrets.

use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::{Value, json};

use crate::registry::{Column, Kind};
use crate::table;

impl Kind for ServiceAccount {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "serviceaccount";
    const SHORT_NAMES: &'static [&'static str] = &["sa"];

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Secrets",
                "string",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(self.secrets.as_ref().map_or(0, Vec::len)),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;

    #[test]
    fn cells_count_secrets() {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("default".into());
        let now = jiff::Timestamp::from_second(0).unwrap();
        assert_eq!(sa.cells(now)[..2], [json!("default"), json!(0)]);
        sa.secrets = Some(vec![ObjectReference::default(), ObjectReference::default()]);
        assert_eq!(sa.cells(now)[1], json!(2));
        assert_eq!(ServiceAccount::columns().len(), sa.cells(now).len());
    }
}
