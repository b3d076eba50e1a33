//! Events for what the agent did (Pulled, Created, Started, Killing, Failed, node Starting and
//! readiness), written as core/v1 Events the way upstream's kubelet writes them: source
//! `kubelet` on this host, repeats folded into one Event whose `count` grows.
//!
//! Recording never blocks the caller: events go through a bounded queue and are dropped when
//! it is full (an event is a courtesy; the pod status is the record).

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::status::api_time;

/// Events queued at most; more are dropped.
const QUEUE: usize = 1024;
/// Distinct events remembered for folding repeats.
const REMEMBERED: usize = 4096;

/// One event to write.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// What it is about.
    pub object: ObjectReference,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// Upstream's CamelCase reason.
    pub reason: String,
    /// Human text.
    pub message: String,
}

/// The handle components record events with.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<EventRecord>,
}

impl Recorder {
    /// A recorder and the queue its events arrive on.
    pub fn channel() -> (Recorder, mpsc::Receiver<EventRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Recorder { tx }, rx)
    }

    /// Records a `Normal` event.
    pub fn normal(&self, object: &ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, false, reason, message.into());
    }

    /// Records a `Warning` event.
    pub fn warning(&self, object: &ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, true, reason, message.into());
    }

    fn record(&self, object: &ObjectReference, warning: bool, reason: &str, message: String) {
        let record = EventRecord {
            object: object.clone(),
            warning,
            reason: reason.into(),
            message,
        };
        if self.tx.try_send(record).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// A reference to `pod`, or to one of its containers (`spec.containers{name}`), as upstream's
/// events carry.
pub fn pod_ref(pod: &Pod, container: Option<(&str, bool)>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: container.map(|(name, init)| {
            format!(
                "spec.{}{{{name}}}",
                if init { "initContainers" } else { "containers" }
            )
        }),
    }
}

/// A reference to node `name` (upstream uses the node name as its uid in events).
pub fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..Default::default()
    }
}

/// The Event object for a first occurrence.
pub fn new_event(record: &EventRecord, node: &str, now: Timestamp) -> Event {
    let namespace = record
        .object
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = format!(
        "{}.{:x}",
        record.object.name.as_deref().unwrap_or("unknown"),
        now.as_nanosecond()
    );
    Event {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: record.object.clone(),
        reason: Some(record.reason.clone()),
        message: Some(record.message.clone()),
        type_: Some(if record.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node.into()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.into()),
        first_timestamp: Some(api_time(now)),
        last_timestamp: Some(api_time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    }
}

/// Key under which repeats of one event fold together.
fn key(record: &EventRecord) -> String {
    let o = &record.object;
    format!(
        "{}/{}/{}/{}/{}/{}",
        o.uid.as_deref().unwrap_or_default(),
        o.field_path.as_deref().unwrap_or_default(),
        record.warning,
        record.reason,
        record.message,
        o.name.as_deref().unwrap_or_default(),
    )
}

/// Writes queued events until `shutdown`.
pub async fn run_sink(
    client: kube::Client,
    node: String,
    mut rx: mpsc::Receiver<EventRecord>,
    shutdown: CancellationToken,
) {
    // Key → (namespace, event name, count) of events already written.
    let mut seen: HashMap<String, (String, String, i32)> = HashMap::new();
    loop {
        let record = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let now = Timestamp::now();
        let k = key(&record);
        if let Some((namespace, name, count)) = seen.get(&k).cloned() {
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": api_time(now),
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    seen.insert(k, (namespace, name, count + 1));
                    continue;
                }
                // Expired or deleted: write it afresh below.
                Err(e) => tracing::debug!(error = %e, "could not fold an event; writing a new one"),
            }
        }
        let event = new_event(&record, &node, now);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(k, (namespace, name, 1));
            }
            Err(e) => {
                tracing::debug!(error = %e, reason = %record.reason, "could not write an event")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_look_like_the_kubelets() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let record = EventRecord {
            object: pod_ref(&pod, Some(("web", false))),
            warning: false,
            reason: "Started".into(),
            message: "Started container web".into(),
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = new_event(&record, "n1", now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(e.metadata.name.as_deref(), Some("web-1.17979cfe362a0000"));
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{web}")
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(
            e.source.as_ref().unwrap().component.as_deref(),
            Some("kubelet")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("n1"));
        assert_eq!(e.count, Some(1));

        let node_event = new_event(
            &EventRecord {
                object: node_ref("n1"),
                warning: true,
                reason: "NodeNotReady".into(),
                message: "x".into(),
            },
            "n1",
            now,
        );
        assert_eq!(node_event.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(node_event.type_.as_deref(), Some("Warning"));
        assert_eq!(
            pod_ref(&pod, Some(("setup", true))).field_path.as_deref(),
            Some("spec.initContainers{setup}")
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let (recorder, mut rx) = Recorder::channel();
        for i in 0..QUEUE + 10 {
            recorder.normal(&node_ref("n1"), "Test", format!("{i}"));
        }
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, QUEUE);
    }
}
