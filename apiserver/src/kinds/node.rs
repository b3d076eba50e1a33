//! Nodes: registered by agents, status through `/status`, cordoned through `spec.unschedulable`;
//! the `kubectl get nodes` columns.

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::registry::{Column, Kind, Subresource};
use crate::table;

impl Kind for Node {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "node";
    const SHORT_NAMES: &'static [&'static str] = &["no"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status];
    const FIELDS: &'static [&'static str] = &["spec.unschedulable"];

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "spec.unschedulable" => Some(
                self.spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false)
                    .to_string(),
            ),
            _ => None,
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(cidr) = self.spec.as_ref().and_then(|s| s.pod_cidr.as_deref())
            && !is_cidr(cidr)
        {
            errs.push(FieldError::invalid(
                "spec.podCIDR",
                cidr,
                "must be a valid CIDR (e.g. 10.244.0.0/24)",
            ));
        }
        for (i, t) in self
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .enumerate()
        {
            if !matches!(
                t.effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                errs.push(FieldError::not_supported(
                    format!("spec.taints[{i}].effect"),
                    &t.effect,
                    &["NoExecute", "NoSchedule", "PreferNoSchedule"],
                ));
            }
        }
        errs
    }

    fn prepare_for_update(&mut self, old: &Self) {
        self.status = old.status.clone();
    }

    fn prepare_for_subresource_update(&mut self, old: &Self, _sub: Subresource) {
        let status = self.status.take();
        *self = Node {
            status,
            ..old.clone()
        };
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new("Status", "string", "The status of the node"),
            Column::new("Roles", "string", "The roles of the node"),
            Column::age_column(),
            Column::new("Version", "string", "Kubelet Version reported by the node."),
            Column::new("Internal-IP", "string", "List of addresses reachable to the node.").wide(),
            Column::new("External-IP", "string", "List of addresses reachable to the node.").wide(),
            Column::new("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 12 (bookworm)).").wide(),
            Column::new("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r'.").wide(),
            Column::new("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. docker://20.10.24).").wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let mut state: Vec<String> = status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "Ready")
            .map(|c| {
                if c.status == "True" {
                    "Ready".to_string()
                } else {
                    "NotReady".to_string()
                }
            })
            .collect();
        if state.is_empty() {
            state.push("Unknown".into());
        }
        if self
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            state.push("SchedulingDisabled".into());
        }
        let mut roles: Vec<String> = Vec::new();
        for (k, v) in self.metadata.labels.iter().flatten() {
            if let Some(role) = k
                .strip_prefix("node-role.kubernetes.io/")
                .filter(|r| !r.is_empty())
            {
                roles.push(role.to_string());
            } else if k == "kubernetes.io/role" && !v.is_empty() {
                roles.push(v.clone());
            }
        }
        roles.sort();
        roles.dedup();
        let address = |t: &str| {
            status
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == t)
                .map(|a| a.address.clone())
                .unwrap_or_else(|| "<none>".into())
        };
        let info = status.node_info.clone().unwrap_or_default();
        let or_unknown = |s: String| {
            if s.is_empty() {
                "<unknown>".to_string()
            } else {
                s
            }
        };
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(state.join(",")),
            json!(if roles.is_empty() {
                "<none>".to_string()
            } else {
                roles.join(",")
            }),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(info.kubelet_version),
            json!(address("InternalIP")),
            json!(address("ExternalIP")),
            json!(or_unknown(info.os_image)),
            json!(or_unknown(info.kernel_version)),
            json!(or_unknown(info.container_runtime_version)),
        ]
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits.parse::<u8>().is_ok_and(|b| b <= 32),
        Ok(std::net::IpAddr::V6(_)) => bits.parse::<u8>().is_ok_and(|b| b <= 128),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};

    #[test]
    fn status_column_shows_cordon_and_readiness() {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(
            [(
                "node-role.kubernetes.io/control-plane".to_string(),
                String::new(),
            )]
            .into(),
        );
        let now = jiff::Timestamp::now();
        assert_eq!(n.cells(now)[1], json!("Unknown"));
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        let cells = n.cells(now);
        assert_eq!(cells[1], json!("Ready,SchedulingDisabled"));
        assert_eq!(cells[2], json!("control-plane"));
        assert_eq!(n.field("spec.unschedulable").as_deref(), Some("true"));
    }

    #[test]
    fn pod_cidr_must_parse() {
        assert!(is_cidr("10.244.0.0/24"));
        assert!(!is_cidr("10.244.0.0"));
        assert!(!is_cidr("10.244.0.0/33"));
    }
}
