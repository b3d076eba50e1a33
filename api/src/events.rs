//! Recording core/v1 Events, as upstream client-go's `tools/record` recorder: what a component
//! did and why, visible in `kubectl describe` and `kubectl get events`.
//!
//! Repeats of the same event (same object, type, reason and message from the same component)
//! are folded into one Event whose `count` and `lastTimestamp` are patched, as upstream's event
//! correlator does, so a pod that stays unschedulable does not flood the store. Recording is
//! best effort: a failure is logged, never returned, because no component should stop or retry
//! its real work over an Event.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How many distinct recent events are remembered for folding repeats.
const CACHE_SIZE: usize = 4096;
/// Upstream rejects event messages longer than this (events.k8s.io validation); cut ours.
const MAX_MESSAGE_BYTES: usize = 1024;

/// An event's type, as `kubectl describe` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something happened as it should.
    Normal,
    /// Something did not work as it should.
    Warning,
}

impl EventType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What identifies repeats of one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: String,
    namespace: String,
    name: String,
    uid: String,
    type_: EventType,
    reason: String,
    message: String,
}

/// The Event that repeats of a key are folded into.
#[derive(Debug, Clone)]
struct Recorded {
    namespace: String,
    name: String,
    count: i32,
}

/// Remembers the last [`CACHE_SIZE`] distinct events, forgetting the oldest first.
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Recorded>,
    order: VecDeque<Key>,
}

impl Cache {
    fn insert(&mut self, key: Key, value: Recorded) {
        if !self.entries.contains_key(&key) {
            if self.order.len() >= CACHE_SIZE
                && let Some(old) = self.order.pop_front()
            {
                self.entries.remove(&old);
            }
            self.order.push_back(key.clone());
        }
        self.entries.insert(key, value);
    }
}

/// Who reports an event: the component (`default-scheduler`) and its instance (host or leader
/// identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// `source.component` and `reportingComponent`.
    pub component: String,
    /// `reportingInstance`.
    pub instance: String,
}

/// Records Events on behalf of one component instance.
pub struct EventRecorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Mutex<Cache>,
}

/// The namespace an event about `regarding` lives in: the object's own, or `default` for
/// cluster-scoped objects such as nodes (as upstream).
pub fn event_namespace(regarding: &ObjectReference) -> String {
    regarding
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// A new Event named `<object>.<hex nanoseconds>`, as upstream names them.
pub fn new_event(
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    message: &str,
    reporter: &Reporter,
    now: jiff::Timestamp,
) -> Event {
    let object = regarding.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(event_namespace(regarding)),
            ..Default::default()
        },
        involved_object: regarding.clone(),
        reason: Some(reason.to_string()),
        message: Some(truncate(message, MAX_MESSAGE_BYTES).to_string()),
        type_: Some(type_.as_str().to_string()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: (!action.is_empty()).then(|| action.to_string()),
        source: Some(EventSource {
            component: Some(reporter.component.clone()),
            host: None,
        }),
        reporting_component: Some(reporter.component.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Default::default()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl EventRecorder {
    /// A recorder writing as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        EventRecorder {
            client,
            reporter,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Records one event about `regarding`; repeats bump the count of the earlier Event.
    pub async fn record(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        message: &str,
    ) {
        let key = Key {
            kind: regarding.kind.clone().unwrap_or_default(),
            namespace: regarding.namespace.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let now = jiff::Timestamp::now();
        let earlier = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .get(&key)
            .cloned();
        if let Some(mut earlier) = earlier {
            earlier.count = earlier.count.saturating_add(1);
            let api: Api<Event> = Api::namespaced(self.client.clone(), &earlier.namespace);
            let patch = serde_json::json!({
                "count": earlier.count,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(
                    &earlier.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.remember(key, earlier);
                    return;
                }
                // The earlier Event expired or was deleted: write a new one below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(reason, error = %e, "could not update event");
                    return;
                }
            }
        }
        let event = new_event(
            regarding,
            type_,
            reason,
            action,
            message,
            &self.reporter,
            now,
        );
        let namespace = event_namespace(regarding);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => self.remember(
                key,
                Recorded {
                    namespace,
                    name: created.metadata.name.unwrap_or_default(),
                    count: 1,
                },
            ),
            Err(e) => tracing::warn!(reason, error = %e, "could not record event"),
        }
    }

    fn remember(&self, key: Key, value: Recorded) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, value);
    }
}

/// A reference to a namespaced or cluster-scoped object for an event's `involvedObject`.
pub fn object_reference<K>(obj: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_ref() -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_named_and_placed_as_upstream() {
        let now = jiff::Timestamp::from_nanosecond(0x1234).unwrap();
        let e = new_event(
            &pod_ref(),
            EventType::Warning,
            "FailedScheduling",
            "Scheduling",
            "0/1 nodes are available",
            &Reporter {
                component: "default-scheduler".into(),
                instance: "host_1".into(),
            },
            now,
        );
        assert_eq!(e.metadata.name.as_deref(), Some("web.1234"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.count, Some(1));
        assert_eq!(
            e.source.and_then(|s| s.component).as_deref(),
            Some("default-scheduler")
        );
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(event_namespace(&node), "default");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long, MAX_MESSAGE_BYTES);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn cache_forgets_the_oldest() {
        let mut cache = Cache::default();
        let key = |i: usize| Key {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: format!("p{i}"),
            uid: String::new(),
            type_: EventType::Normal,
            reason: "R".into(),
            message: "m".into(),
        };
        let rec = || Recorded {
            namespace: "default".into(),
            name: "e".into(),
            count: 1,
        };
        for i in 0..CACHE_SIZE + 10 {
            cache.insert(key(i), rec());
        }
        assert_eq!(cache.entries.len(), CACHE_SIZE);
        assert!(!cache.entries.contains_key(&key(0)));
        assert!(cache.entries.contains_key(&key(CACHE_SIZE + 9)));
    }
}
