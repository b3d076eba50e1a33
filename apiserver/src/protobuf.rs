//! Protobuf request bodies. kubectl 1.32+ sends its `create` generators' objects
//! (`kubectl create deployment|job|cronjob|namespace|configmap|secret|service|serviceaccount`,
//! `kubectl autoscale`)
//! as `application/vnd.kubernetes.protobuf`: the magic `k8s\0`, then a `runtime.Unknown` whose
//! `raw` is the object in protobuf. The messages are k8s-pb's; here they become the JSON the rest
//! of the server reads, field by field, for the kinds those generators make.

use base64::Engine;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::autoscaling::v1 as autoscaling;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::errors::{ApiError, ApiResult};

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf body into the object's JSON.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("a protobuf body must start with the k8s\\0 magic"))?;
    let unknown = Unknown::decode(raw)
        .map_err(|e| ApiError::bad_request(format!("the protobuf body is malformed: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
    );
    let bytes = unknown.raw.unwrap_or_default();
    let bad = |e: prost::DecodeError| {
        ApiError::bad_request(format!("the protobuf {kind} is malformed: {e}"))
    };
    let mut v = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(&core::Namespace::decode(&*bytes).map_err(bad)?),
        ("v1", "ConfigMap") => config_map(&core::ConfigMap::decode(&*bytes).map_err(bad)?),
        ("v1", "Secret") => secret(&core::Secret::decode(&*bytes).map_err(bad)?),
        ("v1", "Service") => service(&core::Service::decode(&*bytes).map_err(bad)?),
        ("v1", "ServiceAccount") => {
            service_account(&core::ServiceAccount::decode(&*bytes).map_err(bad)?)
        }
        ("apps/v1", "Deployment") => deployment(&apps::Deployment::decode(&*bytes).map_err(bad)?),
        ("batch/v1", "Job") => job(&batch::Job::decode(&*bytes).map_err(bad)?),
        ("batch/v1", "CronJob") => cron_job(&batch::CronJob::decode(&*bytes).map_err(bad)?),
        ("autoscaling/v1", "HorizontalPodAutoscaler") => {
            hpa_v1(&autoscaling::HorizontalPodAutoscaler::decode(&*bytes).map_err(bad)?)
        }
        _ => {
            return Err(ApiError::unsupported_media_type_for(
                MEDIA_TYPE,
                &format!(
                    "protobuf is understood for the kinds `kubectl create` generates; send {api_version} {kind} as JSON or YAML"
                ),
            ));
        }
    };
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

/// A JSON object built from optional fields: what is unset stays out.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(mut self, k: &str, v: impl Into<Option<Value>>) -> Self {
        if let Some(v) = v.into() {
            let empty = match &v {
                Value::Null => true,
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            };
            if !empty {
                self.0.insert(k.to_string(), v);
            }
        }
        self
    }
    /// Go encodes unset strings as empty ones, which its JSON leaves out: so do we.
    fn s(self, k: &str, v: &Option<String>) -> Self {
        let v = v.clone().filter(|s| !s.is_empty()).map(Value::from);
        self.put(k, v)
    }
    /// A non-pointer Go number: zero means unset.
    fn i0(self, k: &str, v: Option<i32>) -> Self {
        self.i(k, v.filter(|n| *n != 0))
    }
    /// A non-pointer Go bool: false means unset.
    fn b0(self, k: &str, v: Option<bool>) -> Self {
        self.b(k, v.filter(|b| *b))
    }
    fn i(self, k: &str, v: Option<impl Into<i64>>) -> Self {
        self.put(k, v.map(|n| Value::from(n.into())))
    }
    fn b(mut self, k: &str, v: Option<bool>) -> Self {
        if let Some(b) = v {
            self.0.insert(k.to_string(), Value::from(b));
        }
        self
    }
    fn strings(self, k: &str, v: &[String]) -> Self {
        self.put(k, Value::from(v.to_vec()))
    }
    fn map(self, k: &str, v: &std::collections::BTreeMap<String, String>) -> Self {
        self.put(k, json!(v))
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn object_meta(m: &Option<meta::ObjectMeta>) -> Value {
    let Some(m) = m else { return json!({}) };
    let owners: Vec<Value> = m
        .owner_references
        .iter()
        .map(|o| {
            Obj::default()
                .s("apiVersion", &o.api_version)
                .s("kind", &o.kind)
                .s("name", &o.name)
                .s("uid", &o.uid)
                .b("controller", o.controller)
                .b("blockOwnerDeletion", o.block_owner_deletion)
                .done()
        })
        .collect();
    Obj::default()
        .s("name", &m.name)
        .s("generateName", &m.generate_name)
        .s("namespace", &m.namespace)
        .s("resourceVersion", &m.resource_version)
        .map("labels", &m.labels)
        .map("annotations", &m.annotations)
        .put("ownerReferences", Value::from(owners))
        .strings("finalizers", &m.finalizers)
        .done()
}

fn label_selector(s: &Option<meta::LabelSelector>) -> Option<Value> {
    let s = s.as_ref()?;
    let exprs: Vec<Value> = s
        .match_expressions
        .iter()
        .map(|e| {
            Obj::default()
                .s("key", &e.key)
                .s("operator", &e.operator)
                .strings("values", &e.values)
                .done()
        })
        .collect();
    Some(
        Obj::default()
            .map("matchLabels", &s.match_labels)
            .put("matchExpressions", Value::from(exprs))
            .done(),
    )
}

fn int_or_string(v: &Option<IntOrString>) -> Option<Value> {
    let v = v.as_ref()?;
    Some(match v.r#type {
        Some(1) => Value::from(v.str_val.clone().unwrap_or_default()),
        _ => Value::from(v.int_val.unwrap_or(0)),
    })
}

fn quantities(
    m: &std::collections::BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, q)| (k.clone(), Value::from(q.string.clone().unwrap_or_default())))
            .collect(),
    )
}

fn container(c: &core::Container) -> Value {
    let ports: Vec<Value> = c
        .ports
        .iter()
        .map(|p| {
            Obj::default()
                .s("name", &p.name)
                .i("containerPort", p.container_port)
                .i0("hostPort", p.host_port)
                .s("protocol", &p.protocol)
                .s("hostIP", &p.host_ip)
                .done()
        })
        .collect();
    let env: Vec<Value> = c
        .env
        .iter()
        .map(|e| {
            Obj::default()
                .s("name", &e.name)
                .s("value", &e.value)
                .done()
        })
        .collect();
    let resources = c.resources.as_ref().map(|r| {
        Obj::default()
            .put("limits", quantities(&r.limits))
            .put("requests", quantities(&r.requests))
            .done()
    });
    let mut out = Obj::default()
        .s("name", &c.name)
        .s("image", &c.image)
        .strings("command", &c.command)
        .strings("args", &c.args)
        .s("workingDir", &c.working_dir)
        .put("ports", Value::from(ports))
        .put("env", Value::from(env))
        .s("imagePullPolicy", &c.image_pull_policy)
        .s("terminationMessagePath", &c.termination_message_path)
        .s("terminationMessagePolicy", &c.termination_message_policy)
        .b0("stdin", c.stdin)
        .b0("tty", c.tty)
        .done();
    // kubectl sends `resources: {}`; keep it so the stored object reads as upstream's.
    if let Some(r) = resources {
        out["resources"] = r;
    }
    out
}

fn pod_spec(s: &Option<core::PodSpec>) -> Value {
    let Some(s) = s else { return json!({}) };
    Obj::default()
        .put(
            "containers",
            Value::from(s.containers.iter().map(container).collect::<Vec<_>>()),
        )
        .put(
            "initContainers",
            Value::from(s.init_containers.iter().map(container).collect::<Vec<_>>()),
        )
        .s("restartPolicy", &s.restart_policy)
        .i(
            "terminationGracePeriodSeconds",
            s.termination_grace_period_seconds,
        )
        .i("activeDeadlineSeconds", s.active_deadline_seconds)
        .s("dnsPolicy", &s.dns_policy)
        .map("nodeSelector", &s.node_selector)
        .s("serviceAccountName", &s.service_account_name)
        .s("nodeName", &s.node_name)
        .b0("hostNetwork", s.host_network)
        .s("schedulerName", &s.scheduler_name)
        .done()
}

fn pod_template(t: &Option<core::PodTemplateSpec>) -> Value {
    let Some(t) = t else { return json!({}) };
    json!({"metadata": object_meta(&t.metadata), "spec": pod_spec(&t.spec)})
}

fn namespace(n: &core::Namespace) -> Value {
    let spec = n
        .spec
        .as_ref()
        .map(|s| Obj::default().strings("finalizers", &s.finalizers).done());
    Obj::default()
        .put("metadata", object_meta(&n.metadata))
        .put("spec", spec)
        .done()
}

fn config_map(c: &core::ConfigMap) -> Value {
    let binary: Map<String, Value> = c
        .binary_data
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::from(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    Obj::default()
        .put("metadata", object_meta(&c.metadata))
        .map("data", &c.data)
        .put("binaryData", Value::Object(binary))
        .b("immutable", c.immutable)
        .done()
}

fn secret(s: &core::Secret) -> Value {
    let data: Map<String, Value> = s
        .data
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::from(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    Obj::default()
        .put("metadata", object_meta(&s.metadata))
        .put("data", Value::Object(data))
        .map("stringData", &s.string_data)
        .s("type", &s.r#type)
        .b("immutable", s.immutable)
        .done()
}

fn service_account(s: &core::ServiceAccount) -> Value {
    Obj::default()
        .put("metadata", object_meta(&s.metadata))
        .b(
            "automountServiceAccountToken",
            s.automount_service_account_token,
        )
        .done()
}

fn service(s: &core::Service) -> Value {
    let spec = s.spec.as_ref().map(|sp| {
        let ports: Vec<Value> = sp
            .ports
            .iter()
            .map(|p| {
                Obj::default()
                    .s("name", &p.name)
                    .s("protocol", &p.protocol)
                    .i("port", p.port)
                    .put("targetPort", int_or_string(&p.target_port))
                    .i0("nodePort", p.node_port)
                    .done()
            })
            .collect();
        Obj::default()
            .put("ports", Value::from(ports))
            .map("selector", &sp.selector)
            .s("clusterIP", &sp.cluster_ip)
            .strings("clusterIPs", &sp.cluster_ips)
            .s("type", &sp.r#type)
            .s("externalName", &sp.external_name)
            .strings("externalIPs", &sp.external_ips)
            .s("sessionAffinity", &sp.session_affinity)
            .done()
    });
    Obj::default()
        .put("metadata", object_meta(&s.metadata))
        .put("spec", spec)
        .done()
}

fn deployment(d: &apps::Deployment) -> Value {
    let spec = d.spec.as_ref().map(|s| {
        let strategy = s.strategy.as_ref().map(|st| {
            let rolling = st.rolling_update.as_ref().map(|r| {
                Obj::default()
                    .put("maxSurge", int_or_string(&r.max_surge))
                    .put("maxUnavailable", int_or_string(&r.max_unavailable))
                    .done()
            });
            Obj::default()
                .s("type", &st.r#type)
                .put("rollingUpdate", rolling)
                .done()
        });
        let mut out = Obj::default()
            .i("replicas", s.replicas)
            .put("selector", label_selector(&s.selector))
            .put("template", pod_template(&s.template))
            .i0("minReadySeconds", s.min_ready_seconds)
            .i("revisionHistoryLimit", s.revision_history_limit)
            .b0("paused", s.paused)
            .i("progressDeadlineSeconds", s.progress_deadline_seconds)
            .done();
        if let Some(st) = strategy {
            out["strategy"] = st;
        }
        out
    });
    Obj::default()
        .put("metadata", object_meta(&d.metadata))
        .put("spec", spec)
        .done()
}

fn job_spec(s: &batch::JobSpec) -> Value {
    Obj::default()
        .i("parallelism", s.parallelism)
        .i("completions", s.completions)
        .i("activeDeadlineSeconds", s.active_deadline_seconds)
        .i("backoffLimit", s.backoff_limit)
        .put("selector", label_selector(&s.selector))
        .b("manualSelector", s.manual_selector)
        .put("template", pod_template(&s.template))
        .i("ttlSecondsAfterFinished", s.ttl_seconds_after_finished)
        .s("completionMode", &s.completion_mode)
        .b("suspend", s.suspend)
        .done()
}

fn job(j: &batch::Job) -> Value {
    Obj::default()
        .put("metadata", object_meta(&j.metadata))
        .put("spec", j.spec.as_ref().map(job_spec))
        .done()
}

fn cron_job(c: &batch::CronJob) -> Value {
    let spec = c.spec.as_ref().map(|s| {
        let template = s.job_template.as_ref().map(|t| {
            json!({"metadata": object_meta(&t.metadata), "spec": t.spec.as_ref().map(job_spec).unwrap_or(json!({}))})
        });
        Obj::default()
            .s("schedule", &s.schedule)
            .s("timeZone", &s.time_zone)
            .i("startingDeadlineSeconds", s.starting_deadline_seconds)
            .s("concurrencyPolicy", &s.concurrency_policy)
            .b("suspend", s.suspend)
            .put("jobTemplate", template)
            .i("successfulJobsHistoryLimit", s.successful_jobs_history_limit)
            .i("failedJobsHistoryLimit", s.failed_jobs_history_limit)
            .done()
    });
    Obj::default()
        .put("metadata", object_meta(&c.metadata))
        .put("spec", spec)
        .done()
}

/// What `kubectl autoscale` sends.
fn hpa_v1(h: &autoscaling::HorizontalPodAutoscaler) -> Value {
    let spec = h.spec.as_ref().map(|s| {
        let target = s.scale_target_ref.as_ref().map(|t| {
            Obj::default()
                .s("apiVersion", &t.api_version)
                .s("kind", &t.kind)
                .s("name", &t.name)
                .done()
        });
        Obj::default()
            .put("scaleTargetRef", target)
            .i("minReplicas", s.min_replicas)
            .i("maxReplicas", s.max_replicas)
            .i(
                "targetCPUUtilizationPercentage",
                s.target_cpu_utilization_percentage,
            )
            .done()
    });
    Obj::default()
        .put("metadata", object_meta(&h.metadata))
        .put("spec", spec)
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn a_generated_deployment_decodes_to_its_json() {
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), "web".to_string())].into();
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: labels.clone(),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("demo".into()),
                            image: Some("miniorch/demo".into()),
                            ports: vec![core::ContainerPort {
                                container_port: Some(8080),
                                ..Default::default()
                            }],
                            resources: Some(Default::default()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(Default::default()),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let v = decode(&wrap("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "miniorch/demo"
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            8080
        );
        let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(v).unwrap();
        assert_eq!(typed.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn secrets_and_services() {
        let s = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("s".into()),
                ..Default::default()
            }),
            data: [("k".to_string(), b"v".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&wrap("v1", "Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "dg==");
        let svc = core::Service {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            }),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: None,
                    }),
                    ..Default::default()
                }],
                r#type: Some("NodePort".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = decode(&wrap("v1", "Service", svc.encode_to_vec())).unwrap();
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(v["spec"]["type"], "NodePort");
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\xff\xff\xff").unwrap_err().code, 400);
        assert_eq!(decode(&wrap("v1", "Pod", vec![])).unwrap_err().code, 415);
        assert_eq!(
            decode(&wrap("v1", "Secret", vec![0xff, 0xff]))
                .unwrap_err()
                .code,
            400
        );
    }
}
