//! Endpoints (core/v1) and EndpointSlices (discovery.k8s.io/v1): where a service's ready pods
//! are. Written by the endpoints controllers, read by the proxy, DNS and `kubectl describe svc`.

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::registry::{Column, Kind};
use crate::table;

impl Kind for Endpoints {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "endpoints";
    const SHORT_NAMES: &'static [&'static str] = &["ep"];
    const CREATE_ON_UPDATE: bool = true;

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, s) in self.subsets.iter().flatten().enumerate() {
            for (j, a) in s
                .addresses
                .iter()
                .flatten()
                .chain(s.not_ready_addresses.iter().flatten())
                .enumerate()
            {
                if a.ip.parse::<std::net::IpAddr>().is_err() {
                    errs.push(FieldError::invalid(
                        format!("subsets[{i}].addresses[{j}].ip"),
                        &a.ip,
                        "must be a valid IP address",
                    ));
                }
            }
            for (j, p) in s.ports.iter().flatten().enumerate() {
                if !(1..=65535).contains(&p.port) {
                    errs.push(FieldError::invalid(
                        format!("subsets[{i}].ports[{j}].port"),
                        p.port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new("Endpoints", "string", "Endpoints of the service."),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let mut eps = Vec::new();
        for s in self.subsets.iter().flatten() {
            for a in s.addresses.iter().flatten() {
                match s.ports.as_deref() {
                    Some(ports) if !ports.is_empty() => {
                        eps.extend(ports.iter().map(|p| format!("{}:{}", a.ip, p.port)))
                    }
                    _ => eps.push(a.ip.clone()),
                }
            }
        }
        let text = match eps.len() {
            0 => "<none>".to_string(),
            n if n > 3 => format!("{} + {} more...", eps[..3].join(","), n - 3),
            _ => eps.join(","),
        };
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(text),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

impl Kind for EndpointSlice {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "endpointslice";

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let types = ["IPv4", "IPv6", "FQDN"];
        if !types.contains(&self.address_type.as_str()) {
            errs.push(FieldError::not_supported(
                "addressType",
                &self.address_type,
                &types,
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.addresses.is_empty() {
                errs.push(FieldError::required(
                    format!("endpoints[{i}].addresses"),
                    "must contain at least 1 address",
                ));
            }
            for (j, a) in e.addresses.iter().enumerate() {
                let ok = match self.address_type.as_str() {
                    "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                    "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                    _ => miniorch_api::names::is_dns1123_subdomain(a),
                };
                if !ok {
                    errs.push(FieldError::invalid(
                        format!("endpoints[{i}].addresses[{j}]"),
                        a,
                        &format!("must be a valid {} address", self.address_type),
                    ));
                }
            }
        }
        for (i, p) in self.ports.iter().flatten().enumerate() {
            if let Some(port) = p.port
                && !(1..=65535).contains(&port)
            {
                errs.push(FieldError::invalid(
                    format!("ports[{i}].port"),
                    port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "AddressType",
                "string",
                "The type of addresses in this slice.",
            ),
            Column::new(
                "Ports",
                "string",
                "The ports of the endpoints in this slice.",
            ),
            Column::new(
                "Endpoints",
                "string",
                "The addresses of the endpoints in this slice.",
            ),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let ports: Vec<String> = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.map(|n| n.to_string()))
            .collect();
        let addrs: Vec<String> = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        let list = |v: &[String]| match v.len() {
            0 => "<unset>".to_string(),
            n if n > 3 => format!("{} + {} more...", v[..3].join(","), n - 3),
            _ => v.join(","),
        };
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(self.address_type),
            json!(list(&ports)),
            json!(list(&addrs)),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}
