//! Shared informers, as upstream's `SharedInformerFactory`: one watch and one cache per resource
//! however many controllers read it. A controller asks for a [`Store`] (to read) and, if it wants
//! to be woken, a subscription (every added or changed object); only what was asked for is
//! watched. [`Informers::start`] runs the watches; [`Informers::wait_for_sync`] waits for every
//! cache's first full list.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

/// Objects a slow subscriber may lag behind before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The namespace node heartbeat Leases live in.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

type Runner = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One resource's shared watch and cache, before it is started.
pub struct Informer<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    api: Api<K>,
    writer: Option<reflector::store::Writer<K>>,
    store: Store<K>,
}

impl<K> Informer<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn new(api: Api<K>) -> Self {
        let writer = reflector::store::Writer::new_shared(SUBSCRIBER_BUFFER, ());
        let store = writer.as_reader();
        Informer {
            api,
            writer: Some(writer),
            store,
        }
    }

    /// The cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A stream of every object added or changed (each subscriber must be polled, or the watch
    /// stalls once [`SUBSCRIBER_BUFFER`] objects wait for it). `None` once the informer has
    /// started: subscribers must all be known before.
    pub fn subscribe(&mut self) -> Option<ReflectHandle<K>> {
        self.writer.as_ref().and_then(|w| w.subscribe())
    }

    fn runner(&mut self, shutdown: CancellationToken) -> Option<Runner> {
        let writer = self.writer.take()?;
        let api = self.api.clone();
        let kind = K::kind(&());
        Some(Box::pin(async move {
            let stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect_shared(writer);
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = stream.next() => match ev {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
                        None => return,
                    }
                }
            }
        }))
    }
}

/// The informers of the controller-manager; a field is created when first asked for.
pub struct Informers {
    client: kube::Client,
    pods: Option<Informer<Pod>>,
    nodes: Option<Informer<Node>>,
    node_leases: Option<Informer<Lease>>,
    namespaces: Option<Informer<Namespace>>,
}

/// A boxed check that a store has synced.
type SyncWait = Pin<Box<dyn Future<Output = bool> + Send>>;

impl Informers {
    /// No informers yet.
    pub fn new(client: kube::Client) -> Self {
        Informers {
            client,
            pods: None,
            nodes: None,
            node_leases: None,
            namespaces: None,
        }
    }

    /// The client the informers use.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Pods in every namespace.
    pub fn pods(&mut self) -> &mut Informer<Pod> {
        let client = self.client.clone();
        self.pods
            .get_or_insert_with(|| Informer::new(Api::all(client)))
    }

    /// Nodes.
    pub fn nodes(&mut self) -> &mut Informer<Node> {
        let client = self.client.clone();
        self.nodes
            .get_or_insert_with(|| Informer::new(Api::all(client)))
    }

    /// Node heartbeat Leases (`kube-node-lease`).
    pub fn node_leases(&mut self) -> &mut Informer<Lease> {
        let client = self.client.clone();
        self.node_leases
            .get_or_insert_with(|| Informer::new(Api::namespaced(client, NODE_LEASE_NAMESPACE)))
    }

    /// Namespaces.
    pub fn namespaces(&mut self) -> &mut Informer<Namespace> {
        let client = self.client.clone();
        self.namespaces
            .get_or_insert_with(|| Informer::new(Api::all(client)))
    }

    /// Starts every informer asked for; they stop at `shutdown`. Returns a future that
    /// resolves to true once all of them have listed everything once (false if one stopped).
    pub fn start(
        &mut self,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = bool> + Send + use<> {
        let mut waits: Vec<SyncWait> = Vec::new();
        start_one(&mut self.pods, shutdown, &mut waits);
        start_one(&mut self.nodes, shutdown, &mut waits);
        start_one(&mut self.node_leases, shutdown, &mut waits);
        start_one(&mut self.namespaces, shutdown, &mut waits);
        async move {
            for w in waits {
                if !w.await {
                    return false;
                }
            }
            true
        }
    }
}

fn start_one<K>(
    informer: &mut Option<Informer<K>>,
    shutdown: &CancellationToken,
    waits: &mut Vec<SyncWait>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let Some(informer) = informer else { return };
    let Some(runner) = informer.runner(shutdown.clone()) else {
        return;
    };
    tokio::spawn(runner);
    let store = informer.store();
    waits.push(Box::pin(
        async move { store.wait_until_ready().await.is_ok() },
    ));
}
