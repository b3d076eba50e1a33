//! Pods: upstream's defaults, validation, immutability on update, graceful deletion, the
//! `binding` subresource, field selectors and the `kubectl get pods` columns.

use std::collections::HashSet;

use axum::response::Response;
use http::StatusCode;
use k8s_openapi::api::core::v1::{
    Binding, Container, Pod, PodCondition, PodSpec, PodStatus, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult, FieldError};
use crate::handlers::{self, ApiRequest, Change, Part};
use crate::registry::{Column, DeleteDecision, Kind, Subresource};
use crate::validation;
use crate::{State, table};

impl Kind for Pod {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "pod";
    const SHORT_NAMES: &'static [&'static str] = &["po"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[
        Subresource::Status,
        Subresource::Binding,
        Subresource::Log,
        Subresource::Exec,
        Subresource::Eviction,
    ];
    const FIELDS: &'static [&'static str] = &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ];

    fn field(&self, field: &str) -> Option<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        match field {
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.restartPolicy" => spec.and_then(|s| s.restart_policy.clone()),
            "spec.schedulerName" => spec.and_then(|s| s.scheduler_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "spec.hostNetwork" => Some(
                spec.and_then(|s| s.host_network)
                    .unwrap_or(false)
                    .to_string(),
            ),
            "status.phase" => status.and_then(|s| s.phase.clone()),
            "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
            "status.nominatedNodeName" => status.and_then(|s| s.nominated_node_name.clone()),
            _ => None,
        }
    }

    fn prepare_for_create(&mut self) {
        let qos = self.spec.as_ref().map(qos_class);
        self.status = Some(PodStatus {
            phase: Some("Pending".into()),
            qos_class: qos,
            ..Default::default()
        });
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        default_pod_spec(spec);
        // What follows is upstream's SetDefaults_Pod and admission: pods only, never templates.
        spec.enable_service_links.get_or_insert(true);
        spec.priority.get_or_insert(0);
        spec.preemption_policy
            .get_or_insert_with(|| "PreemptLowerPriority".into());
        // The DefaultTolerationSeconds admission plugin: ride out a short node outage.
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
                tolerations.push(Toleration {
                    key: Some(key.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(300),
                    value: None,
                });
            }
        }
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            // Limits without requests request the limits, as upstream (pods only).
            let resources = c.resources.get_or_insert_with(Default::default);
            if let Some(limits) = resources.limits.clone() {
                let requests = resources.requests.get_or_insert_with(Default::default);
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        match &self.spec {
            None => vec![FieldError::required("spec", "")],
            Some(spec) => validate_pod_spec("spec", spec),
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if let (Some(new), Some(old)) = (&self.spec, &old.spec) {
            // Only images, activeDeadlineSeconds and added tolerations may change.
            let mut allowed = old.clone();
            for (a, n) in allowed.containers.iter_mut().zip(&new.containers) {
                a.image = n.image.clone();
            }
            if let (Some(a), Some(n)) = (
                allowed.init_containers.as_mut(),
                new.init_containers.as_ref(),
            ) {
                for (a, n) in a.iter_mut().zip(n) {
                    a.image = n.image.clone();
                }
            }
            allowed.active_deadline_seconds = new.active_deadline_seconds;
            let old_tolerations = old.tolerations.clone().unwrap_or_default();
            let new_tolerations = new.tolerations.clone().unwrap_or_default();
            if old_tolerations.iter().all(|t| new_tolerations.contains(t)) {
                allowed.tolerations = new.tolerations.clone();
            }
            if allowed != *new {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        errs
    }

    fn prepare_for_update(&mut self, old: &Self) {
        self.status = old.status.clone();
    }

    fn prepare_for_subresource_update(&mut self, old: &Self, sub: Subresource) {
        match sub {
            // The binding handler builds the new pod from the old one itself.
            Subresource::Binding | Subresource::Scale => {}
            _ => {
                let status = self.status.take();
                *self = Pod {
                    status,
                    ..old.clone()
                };
            }
        }
    }

    /// Upstream's graceful deletion: a pod running on a node gets a deadline and stays until
    /// its agent has stopped it (the agent then deletes it with grace 0).
    fn on_delete(&mut self, grace: Option<i64>, now: &Time) -> ApiResult<DeleteDecision> {
        let spec_grace = self
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let grace = grace.unwrap_or(spec_grace).max(0);
        let bound = self
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            self.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if !bound || terminal || grace == 0 {
            return Ok(DeleteDecision::Now);
        }
        let deadline = jiff::Timestamp::from_second(now.0.as_second() + grace).unwrap_or(now.0);
        let meta = &mut self.metadata;
        // A second delete may shorten the grace period, never lengthen it.
        let shorter = meta
            .deletion_timestamp
            .as_ref()
            .is_none_or(|t| deadline < t.0);
        if shorter {
            meta.deletion_timestamp = Some(Time(deadline));
            meta.deletion_grace_period_seconds = Some(grace);
        }
        Ok(DeleteDecision::Graceful)
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Ready",
                "string",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            Column::new(
                "Status",
                "string",
                "The aggregate status of the containers in this pod.",
            ),
            Column::new(
                "Restarts",
                "string",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            Column::age_column(),
            Column::new(
                "IP",
                "string",
                "IP address allocated to the pod. Routable at least within the cluster.",
            )
            .wide(),
            Column::new(
                "Node",
                "string",
                "NodeName is a request to schedule this pod onto a specific node.",
            )
            .wide(),
            Column::new(
                "Nominated Node",
                "string",
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            )
            .wide(),
            Column::new(
                "Readiness Gates",
                "string",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        pod_cells(self, now)
    }
}

/// Upstream's `SetDefaults_PodSpec` and the container defaults: what a pod and every pod
/// template (deployments, jobs...) get. Pod-only defaults stay in [`Pod`]'s `apply_defaults`.
pub(crate) fn default_pod_spec(spec: &mut PodSpec) {
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.security_context.get_or_insert_with(Default::default);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        default_container(c);
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or("")).into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    c.resources.get_or_insert_with(Default::default);
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Upstream's QoS class: Guaranteed when every container's requests equal its limits for cpu
/// and memory, BestEffort when nothing is set, Burstable otherwise.
fn qos_class(spec: &PodSpec) -> String {
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res));
            let q = requests.and_then(|q| q.get(res)).or(l);
            any |= l.is_some() || q.is_some();
            let same = matches!((l, q), (Some(l), Some(q)) if miniorch_api::quantity::milli_value(l).ok() == miniorch_api::quantity::milli_value(q).ok());
            guaranteed &= same;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
    .into()
}

/// Field errors of a pod spec; `path` is where it sits (`spec` in a pod,
/// `spec.template.spec` in a deployment), so every error names the field the client wrote.
pub(crate) fn validate_pod_spec(path: &str, spec: &PodSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = HashSet::new();
    let groups: [(&str, &[Container]); 2] = [
        ("containers", &spec.containers),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
    ];
    for (field, list) in groups {
        for (i, c) in list.iter().enumerate() {
            let f = format!("{path}.{field}[{i}]");
            validate_container(&f, c, &mut errs);
            if !c.name.is_empty() && !names.insert(c.name.clone()) {
                errs.push(FieldError::duplicate(format!("{f}.name"), &c.name));
            }
        }
    }
    if let Some(p) = spec.restart_policy.as_deref()
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            p,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(p) = spec.dns_policy.as_deref() {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&p) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                p,
                &ok,
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(d) = spec.active_deadline_seconds
        && d <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            d,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && !miniorch_api::names::is_dns1123_subdomain(n)
    {
        errs.push(FieldError::invalid(
            format!("{path}.nodeName"),
            n,
            miniorch_api::names::DNS1123_SUBDOMAIN_MSG,
        ));
    }
    errs.extend(validation::labels(
        &format!("{path}.nodeSelector"),
        spec.node_selector.as_ref(),
    ));
    errs
}

fn validate_container(f: &str, c: &Container, errs: &mut Vec<FieldError>) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{f}.name"), ""));
    } else {
        validation::dns_label(&format!("{f}.name"), &c.name, errs);
    }
    match c.image.as_deref() {
        None => errs.push(FieldError::required(format!("{f}.image"), "")),
        Some(i) if i.trim().is_empty() => errs.push(FieldError::required(format!("{f}.image"), "")),
        Some(i) if i.trim() != i => errs.push(FieldError::invalid(
            format!("{f}.image"),
            i,
            "must not have leading or trailing whitespace",
        )),
        _ => {}
    }
    if let Some(p) = c.image_pull_policy.as_deref() {
        let ok = ["Always", "IfNotPresent", "Never"];
        if !ok.contains(&p) {
            errs.push(FieldError::not_supported(
                format!("{f}.imagePullPolicy"),
                p,
                &ok,
            ));
        }
    }
    let mut port_names = HashSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pf = format!("{f}.ports[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            errs.push(FieldError::invalid(
                format!("{pf}.containerPort"),
                p.container_port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(hp) = p.host_port
            && !(0..=65535).contains(&hp)
        {
            errs.push(FieldError::invalid(
                format!("{pf}.hostPort"),
                hp,
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = p.protocol.as_deref()
            && !matches!(proto, "TCP" | "UDP" | "SCTP")
        {
            errs.push(FieldError::not_supported(
                format!("{pf}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(n) = p.name.as_deref() {
            if n.len() > 15
                || !miniorch_api::names::is_dns1123_label(n)
                || !n.bytes().any(|b| b.is_ascii_lowercase())
            {
                errs.push(FieldError::invalid(format!("{pf}.name"), n, "must be no more than 15 characters, lowercase alphanumerics or '-', with at least one letter"));
            } else if !port_names.insert(n.to_string()) {
                errs.push(FieldError::duplicate(format!("{pf}.name"), n));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.push(FieldError::required(format!("{f}.env[{i}].name"), ""));
        } else if e.name.contains('=') || e.name.chars().any(|ch| ch.is_control()) {
            errs.push(FieldError::invalid(
                format!("{f}.env[{i}].name"),
                &e.name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    if let Some(r) = &c.resources {
        for (which, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (k, q) in map.iter().flatten() {
                validation::quantity(&format!("{f}.resources.{which}[{k}]"), q, errs);
            }
        }
        for (k, req) in r.requests.iter().flatten() {
            let limit = r.limits.as_ref().and_then(|l| l.get(k));
            if let (Some(limit), Ok(rq)) = (limit, miniorch_api::quantity::milli_value(req))
                && miniorch_api::quantity::milli_value(limit).is_ok_and(|l| rq > l)
            {
                errs.push(FieldError::invalid(
                    format!("{f}.resources.requests"),
                    &req.0,
                    &format!("must be less than or equal to {k} limit of {}", limit.0),
                ));
            }
        }
    }
}

/// The cells of `kubectl get pods`, following upstream's printPod.
fn pod_cells(pod: &Pod, now: jiff::Timestamp) -> Vec<Value> {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    let mut reason = status
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or(phase.clone());
    let total = spec.containers.len();
    let mut ready = 0;
    let mut restarts: i32 = 0;
    let mut last_restart: Option<jiff::Timestamp> = None;
    let mut note_restart = |cs: &k8s_openapi::api::core::v1::ContainerStatus| {
        if let Some(t) = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref())
            && last_restart.is_none_or(|l| l < t.0)
        {
            last_restart = Some(t.0);
        }
    };
    let mut initializing = false;
    let init_total = spec.init_containers.as_ref().map_or(0, Vec::len);
    for (i, cs) in status.init_container_statuses.iter().flatten().enumerate() {
        restarts += cs.restart_count;
        note_restart(cs);
        let state = cs.state.clone().unwrap_or_default();
        if let Some(t) = &state.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = match t.reason.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None if t.signal.unwrap_or(0) != 0 => {
                    format!("Init:Signal:{}", t.signal.unwrap_or(0))
                }
                None => format!("Init:ExitCode:{}", t.exit_code),
            };
        } else if let Some(r) = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty() && r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{init_total}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for cs in status.container_statuses.iter().flatten().rev() {
            restarts += cs.restart_count;
            note_restart(cs);
            let state = cs.state.clone().unwrap_or_default();
            if let Some(r) = state
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = r;
            } else if let Some(t) = &state.terminated {
                reason = match t.reason.as_deref().filter(|r| !r.is_empty()) {
                    Some(r) => r.to_string(),
                    None if t.signal.unwrap_or(0) != 0 => {
                        format!("Signal:{}", t.signal.unwrap_or(0))
                    }
                    None => format!("ExitCode:{}", t.exit_code),
                };
            } else if cs.ready && state.running.is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".into();
        } else if !matches!(phase.as_str(), "Succeeded" | "Failed") {
            reason = "Terminating".into();
        }
    }
    let restarts = match (restarts, last_restart) {
        (0, _) | (_, None) => restarts.to_string(),
        (n, Some(t)) => format!("{n} ({} ago)", miniorch_api::format::age(Some(t), now)),
    };
    let none = |s: Option<String>| {
        s.filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into())
    };
    let ip = status
        .pod_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .map(|i| i.ip.clone())
        .or(status.pod_ip.clone());
    let gates = match spec.readiness_gates.as_deref() {
        None | Some([]) => "<none>".to_string(),
        Some(gates) => {
            let ok = gates
                .iter()
                .filter(|g| {
                    status
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == g.condition_type && c.status == "True")
                })
                .count();
            format!("{ok}/{}", gates.len())
        }
    };
    vec![
        json!(pod.metadata.name.clone().unwrap_or_default()),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(table::age(pod.metadata.creation_timestamp.as_ref(), now)),
        json!(none(ip)),
        json!(none(spec.node_name.clone())),
        json!(none(status.nominated_node_name.clone())),
        json!(gates),
    ]
}

/// `POST pods/{name}/binding`: assigns the pod to a node, once (the scheduler's write).
pub async fn bind(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let name = req.path.name.as_deref().ok_or_else(ApiError::no_route)?;
    let ns = req.path.namespace.as_deref();
    let body = crate::http::parse_body(&crate::http::content_type(&req.headers), &req.body)?;
    let binding: Binding = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the Binding body is malformed: {e}")))?;
    if binding.metadata.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            binding.metadata.name.as_deref().unwrap_or("")
        )));
    }
    let node = binding.target.name.clone().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            &[FieldError::required("target.name", "")],
        ));
    }
    if binding
        .target
        .kind
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != "Node")
    {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            &[FieldError::not_supported(
                "target.kind",
                binding.target.kind.as_deref().unwrap_or(""),
                &["Node"],
            )],
        ));
    }
    let uid = binding.metadata.uid.clone();
    handlers::update_object::<Pod>(
        st,
        ns,
        name,
        Part::Sub(Subresource::Binding),
        req.dry_run(),
        &req.manager(
            crate::managed_fields::Operation::Update,
            Some(Subresource::Binding),
        )?,
        |pod| {
            if let Some(uid) = uid.as_deref().filter(|u| !u.is_empty())
                && pod.metadata.uid.as_deref() != Some(uid)
            {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    name,
                    "the UID in the binding does not match the pod",
                ));
            }
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    name,
                    &format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            let current = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if !current.is_empty() {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    name,
                    &format!("pod {name} is already assigned to node {current:?}"),
                ));
            }
            let mut pod = pod.clone();
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(node.clone());
            }
            let annotations = binding.metadata.annotations.clone().unwrap_or_default();
            if !annotations.is_empty() {
                pod.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .extend(annotations);
            }
            set_condition(
                pod.status.get_or_insert_with(Default::default),
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    last_transition_time: Some(handlers::now()),
                    ..Default::default()
                },
            );
            Ok(Change::Replace(pod))
        },
    )
    .await?;
    Ok(crate::http::json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `POST pods/{name}/eviction`: a delete on behalf of a drain or the scheduler. No
/// PodDisruptionBudgets are served yet, so every eviction is allowed.
pub async fn evict(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let name = req.path.name.as_deref().ok_or_else(ApiError::no_route)?;
    let body = crate::http::parse_body(&crate::http::content_type(&req.headers), &req.body)?;
    let eviction: k8s_openapi::api::policy::v1::Eviction = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the Eviction body is malformed: {e}")))?;
    if eviction.metadata.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name} != {}",
            eviction.metadata.name.as_deref().unwrap_or("")
        )));
    }
    let options = eviction.delete_options.unwrap_or_default();
    let opts = handlers::DeleteOptions {
        grace_period_seconds: options.grace_period_seconds,
        uid: options.preconditions.as_ref().and_then(|p| p.uid.clone()),
        resource_version: options
            .preconditions
            .as_ref()
            .and_then(|p| p.resource_version.clone()),
        propagation_policy: options.propagation_policy,
        dry_run: req.dry_run()
            || options
                .dry_run
                .is_some_and(|d| d.iter().any(|x| x == "All")),
    };
    handlers::delete_object::<Pod>(st, req.path.namespace.as_deref(), name, &opts).await?;
    Ok(crate::http::json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Sets a condition, keeping its transition time when the status did not change.
fn set_condition(status: &mut PodStatus, mut cond: PodCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(c) => {
            if c.status == cond.status {
                cond.last_transition_time = c.last_transition_time.clone();
            }
            *c = cond;
        }
        None => conds.push(cond),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus,
        ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            metadata: Default::default(),
            spec: Some(PodSpec {
                containers,
                ..Default::default()
            }),
            status: None,
        }
    }

    fn container(name: &str, image: Option<&str>) -> Container {
        Container {
            name: name.into(),
            image: image.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_as_upstream() {
        let mut p = pod(vec![
            container("web", Some("miniorch/demo")),
            container("db", Some("pg:15")),
        ]);
        p.apply_defaults();
        let s = p.spec.as_ref().unwrap();
        assert_eq!(s.restart_policy.as_deref(), Some("Always"));
        assert_eq!(s.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(s.termination_grace_period_seconds, Some(30));
        assert_eq!(s.scheduler_name.as_deref(), Some("default-scheduler"));
        assert_eq!(s.containers[0].image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            s.containers[1].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(s.tolerations.as_ref().unwrap().len(), 2);
        // Defaulting twice changes nothing (updates default again).
        let once = p.clone();
        p.apply_defaults();
        assert_eq!(p, once);
    }

    #[test]
    fn pull_policy_defaults() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("localhost:5000/nginx", "Always"),
            ("localhost:5000/nginx:1", "IfNotPresent"),
            ("nginx@sha256:abc", "IfNotPresent"),
        ] {
            assert_eq!(default_pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let p = pod(vec![
            container("web", None),
            container("Bad_Name", Some("x")),
            container("web", Some("x")),
        ]);
        let errs: Vec<String> = p.validate().iter().map(|e| e.field.clone()).collect();
        assert_eq!(
            errs,
            vec![
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.containers[2].name"
            ]
        );
        assert_eq!(pod(vec![]).validate()[0].field, "spec.containers");
    }

    #[test]
    fn requests_above_limits_are_invalid() {
        let mut c = container("web", Some("x"));
        c.resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_string(), Quantity("100m".into()))].into()),
            requests: Some([("cpu".to_string(), Quantity("200m".into()))].into()),
            ..Default::default()
        });
        assert_eq!(
            pod(vec![c]).validate()[0].field,
            "spec.containers[0].resources.requests"
        );
    }

    #[test]
    fn qos_classes() {
        let best = pod(vec![container("a", Some("x"))]);
        assert_eq!(qos_class(best.spec.as_ref().unwrap()), "BestEffort");
        let mut g = container("a", Some("x"));
        g.resources = Some(ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_string(), Quantity("1".into())),
                    ("memory".to_string(), Quantity("1Gi".into())),
                ]
                .into(),
            ),
            ..Default::default()
        });
        assert_eq!(
            qos_class(pod(vec![g.clone()]).spec.as_ref().unwrap()),
            "Guaranteed"
        );
        g.resources.as_mut().unwrap().requests =
            Some([("cpu".to_string(), Quantity("500m".into()))].into());
        assert_eq!(qos_class(pod(vec![g]).spec.as_ref().unwrap()), "Burstable");
    }

    #[test]
    fn spec_is_immutable_but_images() {
        let mut old = pod(vec![container("web", Some("a"))]);
        old.apply_defaults();
        let mut new = old.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("b".into());
        assert!(new.validate_update(&old).is_empty());
        new.spec.as_mut().unwrap().containers[0].args = Some(vec!["x".into()]);
        assert_eq!(new.validate_update(&old)[0].reason, "FieldValueForbidden");
    }

    #[test]
    fn graceful_delete_only_for_running_bound_pods() {
        let now = Time(jiff::Timestamp::from_second(1000).unwrap());
        let mut unbound = pod(vec![container("a", Some("x"))]);
        assert_eq!(unbound.on_delete(None, &now).unwrap(), DeleteDecision::Now);
        let mut bound = unbound.clone();
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert_eq!(bound.on_delete(Some(0), &now).unwrap(), DeleteDecision::Now);
        assert_eq!(
            bound.on_delete(None, &now).unwrap(),
            DeleteDecision::Graceful
        );
        assert_eq!(bound.metadata.deletion_grace_period_seconds, Some(30));
        assert_eq!(
            bound
                .metadata
                .deletion_timestamp
                .as_ref()
                .unwrap()
                .0
                .as_second(),
            1030
        );
        // A longer grace on a second delete does not extend the deadline; a shorter one does.
        bound.on_delete(Some(60), &now).unwrap();
        assert_eq!(
            bound
                .metadata
                .deletion_timestamp
                .as_ref()
                .unwrap()
                .0
                .as_second(),
            1030
        );
        bound.on_delete(Some(5), &now).unwrap();
        assert_eq!(
            bound
                .metadata
                .deletion_timestamp
                .as_ref()
                .unwrap()
                .0
                .as_second(),
            1005
        );
        unbound.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(unbound.on_delete(None, &now).unwrap(), DeleteDecision::Now);
    }

    #[test]
    fn table_cells_follow_print_pod() {
        let now = jiff::Timestamp::from_second(10_000).unwrap();
        let mut p = pod(vec![container("a", Some("x")), container("b", Some("y"))]);
        p.metadata.name = Some("web".into());
        p.metadata.creation_timestamp =
            Some(Time(jiff::Timestamp::from_second(10_000 - 65).unwrap()));
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.5".into()),
            container_statuses: Some(vec![
                ContainerStatus {
                    name: "a".into(),
                    ready: true,
                    restart_count: 0,
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ContainerStatus {
                    name: "b".into(),
                    ready: false,
                    restart_count: 2,
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let cells = pod_cells(&p, now);
        assert_eq!(
            cells[..5],
            [
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("2"),
                json!("65s")
            ]
        );
        assert_eq!(cells[5], json!("10.0.0.5"));
        assert_eq!(cells[6], json!("<none>"));
        p.metadata.deletion_timestamp = Some(Time(now));
        assert_eq!(pod_cells(&p, now)[2], json!("Terminating"));
    }
}
