//! Lease-based leader election, as upstream client-go's `leaderelection` package with a
//! `LeaseLock`: candidates race for the `coordination.k8s.io/v1` Lease `kube-system/<name>`; the
//! holder renews it every retry period; the others take it over once it has not changed for
//! `leaseDurationSeconds`. Every write carries the resourceVersion that was read, so two
//! candidates can never both win the same round.
//!
//! The decision ([`decide`], [`desired_spec`]) is pure; the I/O sits behind [`LeaseLock`]
//! ([`KubeLeaseLock`] in production). A component calls [`LeaderElector::acquire`], runs its
//! work under [`Leadership::token`] (cancelled when leadership is lost or on shutdown) and ends
//! with [`Leadership::step_down`], which releases the lease and says whether leadership was lost
//! (upstream then exits the process so a supervisor restarts it).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{EventRecorder, EventType};

/// Upstream's `--leader-elect-lease-duration` default.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Upstream's `--leader-elect-renew-deadline` default.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Upstream's `--leader-elect-retry-period` default.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Waits between attempts are stretched by a random factor up to this, as upstream, so that
/// candidates started together do not keep colliding.
const JITTER_FACTOR: f64 = 1.2;

/// The namespace leader Leases live in, as upstream's control-plane components.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// Why leader election could not run or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The durations do not leave room for renewing before the lease expires.
    #[error("invalid leader election settings: {0}")]
    Config(String),
    /// Leadership was lost (the lease could not be renewed within the renew deadline, or another
    /// candidate took it over); the work must stop.
    #[error("leadership of lease {lease} lost by {identity}")]
    Lost { lease: String, identity: String },
}

/// A failed read or write of the lease.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another writer changed the lease since it was read (HTTP 409).
    #[error("the lease was modified concurrently")]
    Conflict,
    /// The apiserver could not be reached or refused the request.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The request did not finish in time.
    #[error("the request timed out")]
    Timeout,
}

/// Settings of one elector.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Namespace of the Lease (`kube-system` for the control plane).
    pub namespace: String,
    /// Name of the Lease, e.g. `kube-scheduler`.
    pub name: String,
    /// This candidate, written as `holderIdentity` (see [`default_identity`]).
    pub identity: String,
    /// How long others wait, after the lease last changed, before taking it over.
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a renewal before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire, and the leader renews.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// Upstream defaults for the Lease `kube-system/<name>` with identity [`default_identity`].
    pub fn new(name: impl Into<String>) -> Self {
        ElectionConfig {
            namespace: LEASE_NAMESPACE.to_string(),
            name: name.into(),
            identity: default_identity(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks the same invariants as upstream's `NewLeaderElector`.
    pub fn validate(&self) -> Result<(), LeaderError> {
        if self.lease_duration <= self.renew_deadline {
            return Err(LeaderError::Config(
                "lease duration must be greater than the renew deadline".into(),
            ));
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(LeaderError::Config(format!(
                "renew deadline must be greater than retry period * {JITTER_FACTOR}"
            )));
        }
        if self.retry_period.is_zero() {
            return Err(LeaderError::Config("retry period must be positive".into()));
        }
        if self.identity.is_empty() {
            return Err(LeaderError::Config("identity must not be empty".into()));
        }
        if self.lease_duration.as_secs() == 0 || self.lease_duration.as_secs() > i32::MAX as u64 {
            return Err(LeaderError::Config(
                "lease duration must be between 1s and 2^31 s".into(),
            ));
        }
        Ok(())
    }

    fn lease_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The `--leader-elect*` flags of upstream's control-plane components.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectionArgs {
    /// Take part in leader election and do the work only while holding the lease (run several
    /// copies for high availability).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// How long non-leaders wait after the lease last changed before taking it over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader retries renewing before it gives up leadership.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Namespace of the lease.
    #[arg(long, default_value = LEASE_NAMESPACE)]
    pub leader_elect_resource_namespace: String,
    /// Name of the lease (defaults to the component's upstream name).
    #[arg(long)]
    pub leader_elect_resource_name: Option<String>,
}

impl LeaderElectionArgs {
    /// The election these flags describe, for the lease `default_name` unless overridden.
    pub fn election(&self, default_name: &str) -> ElectionConfig {
        ElectionConfig {
            namespace: self.leader_elect_resource_namespace.clone(),
            name: self
                .leader_elect_resource_name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            identity: default_identity(),
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }
}

/// Parses a duration flag the way Go components write them: `40s`, `5m0s`, `1h30m`, `500ms`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid duration {s:?} (want e.g. 40s, 5m0s, 500ms): {e}"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: must not be negative"))
}

/// `<hostname>_<random uuid>`, as upstream's control-plane components identify themselves.
pub fn default_identity() -> String {
    format!("{}_{}", hostname(), uuid::Uuid::new_v4())
}

/// This machine's host name (`localhost` when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// What a candidate does after reading the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no lease yet: create it with us as holder.
    Create,
    /// Someone else held it but it expired or was released: take it over (a transition).
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease: wait and look again.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// The pure decision of one round. `unchanged_for` is how long, by our own monotonic clock, the
/// lease has looked exactly as it does now: expiry is judged by that rather than by the
/// `renewTime` the holder wrote, so clock skew between machines does not matter (as upstream).
pub fn decide(current: Option<&LeaseSpec>, unchanged_for: Duration, me: &str) -> Decision {
    let Some(spec) = current else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    if !holder.is_empty() && unchanged_for < duration {
        return Decision::Wait {
            holder: holder.to_string(),
        };
    }
    Decision::Acquire
}

/// The lease spec to write for `decision` (not for [`Decision::Wait`], which writes nothing).
pub fn desired_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    now: jiff::Timestamp,
    lease_duration: Duration,
) -> LeaseSpec {
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let (acquire_time, transitions) = match decision {
        Decision::Renew => (
            current
                .and_then(|s| s.acquire_time.clone())
                .unwrap_or(MicroTime(now)),
            transitions,
        ),
        Decision::Create => (MicroTime(now), 0),
        Decision::Acquire | Decision::Wait { .. } => {
            (MicroTime(now), transitions.saturating_add(1))
        }
    };
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(lease_duration.as_secs().min(i32::MAX as u64) as i32),
        acquire_time: Some(acquire_time),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// The spec a leader writes when it steps down cleanly: no holder and a 1 s duration, so the
/// next candidate takes over at once (upstream `ReleaseOnCancel`).
pub fn released_spec(current: &LeaseSpec, now: jiff::Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..Default::default()
    }
}

/// Reads and writes of the one lease an elector contends for.
pub trait LeaseLock: Send + Sync + 'static {
    /// The lease, or `None` when it does not exist.
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, LockError>> + Send;
    /// Creates the lease; [`LockError::Conflict`] when it already exists.
    fn create(&self, lease: Lease) -> impl Future<Output = Result<Lease, LockError>> + Send;
    /// Replaces the lease, with `metadata.resourceVersion` as the precondition.
    fn update(&self, lease: Lease) -> impl Future<Output = Result<Lease, LockError>> + Send;
    /// Records a leadership change for people to see (an Event on the lease, upstream).
    fn announce(&self, _lease: &Lease, _message: String) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The lease in the apiserver.
pub struct KubeLeaseLock {
    api: Api<Lease>,
    name: String,
    events: Option<Arc<EventRecorder>>,
}

impl KubeLeaseLock {
    /// The lease `namespace/name` of `config`; events go through `events` when given.
    pub fn new(
        client: kube::Client,
        config: &ElectionConfig,
        events: Option<Arc<EventRecorder>>,
    ) -> Self {
        KubeLeaseLock {
            api: Api::namespaced(client, &config.namespace),
            name: config.name.clone(),
            events,
        }
    }
}

fn conflict_or(e: kube::Error) -> LockError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => LockError::Conflict,
        _ => LockError::Api(e),
    }
}

impl LeaseLock for KubeLeaseLock {
    async fn get(&self) -> Result<Option<Lease>, LockError> {
        Ok(self.api.get_opt(&self.name).await?)
    }

    async fn create(&self, lease: Lease) -> Result<Lease, LockError> {
        self.api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(conflict_or)
    }

    async fn update(&self, lease: Lease) -> Result<Lease, LockError> {
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(conflict_or)
    }

    async fn announce(&self, lease: &Lease, message: String) {
        let Some(events) = &self.events else { return };
        let regarding = ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            namespace: lease.metadata.namespace.clone(),
            name: lease.metadata.name.clone(),
            uid: lease.metadata.uid.clone(),
            resource_version: lease.metadata.resource_version.clone(),
            ..Default::default()
        };
        events
            .record(
                &regarding,
                EventType::Normal,
                "LeaderElection",
                "",
                &message,
            )
            .await;
    }
}

/// What the elector remembers between rounds.
struct Observed {
    /// The lease as last read or written.
    lease: Option<Lease>,
    /// When (our monotonic clock) the spec was first seen as it is now.
    since: Instant,
}

/// Contends for one lease.
pub struct LeaderElector<L: LeaseLock> {
    lock: Arc<L>,
    config: ElectionConfig,
}

impl<L: LeaseLock> LeaderElector<L> {
    /// An elector for `config`; fails when the durations are inconsistent.
    pub fn new(lock: L, config: ElectionConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        Ok(LeaderElector {
            lock: Arc::new(lock),
            config,
        })
    }

    /// The identity this elector writes as holder.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Waits until this candidate holds the lease (`Some`) or `shutdown` is cancelled (`None`).
    /// Errors talking to the apiserver are logged and retried, as upstream.
    pub async fn acquire(self, shutdown: &CancellationToken) -> Option<Leadership> {
        let lease = self.config.lease_key();
        tracing::info!(
            lease,
            identity = self.config.identity,
            "attempting to acquire leader lease"
        );
        let mut observed = Observed {
            lease: None,
            since: Instant::now(),
        };
        let mut last_holder = String::new();
        loop {
            match round(&*self.lock, &self.config, &mut observed).await {
                Ok(RoundResult::Leader) => break,
                Ok(RoundResult::HeldBy(holder)) => {
                    if holder != last_holder {
                        tracing::info!(lease, holder, "lease is held by another candidate");
                        last_holder = holder;
                    }
                }
                Err(e) => tracing::warn!(lease, error = %e, "error acquiring leader lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(jittered(self.config.retry_period)) => {}
            }
        }
        tracing::info!(
            lease,
            identity = self.config.identity,
            "successfully acquired lease"
        );
        if let Some(l) = &observed.lease {
            announce(&*self.lock, &self.config, l, "became leader").await;
        }
        let token = shutdown.child_token();
        let stop = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_loop(
            self.lock.clone(),
            self.config.clone(),
            observed,
            token.clone(),
            stop.clone(),
            lost.clone(),
        ));
        Some(Leadership {
            token,
            stop,
            lost,
            renewer,
            lease,
            identity: self.config.identity,
        })
    }
}

impl<L: LeaseLock> LeaderElector<L> {
    /// Runs `work` while holding the lease: waits to acquire it, runs `work(token)` where
    /// `token` is cancelled on shutdown or when leadership is lost, then steps down. Returns
    /// `Ok(None)` when shut down before leading, `Ok(Some(output))` after a clean step-down,
    /// and [`LeaderError::Lost`] when leadership was lost (the caller should exit non-zero).
    pub async fn run<F, Fut, T>(
        self,
        shutdown: &CancellationToken,
        work: F,
    ) -> Result<Option<T>, LeaderError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let Some(leading) = self.acquire(shutdown).await else {
            return Ok(None);
        };
        let output = work(leading.token()).await;
        leading.step_down().await?;
        Ok(Some(output))
    }
}

/// Holding the lease: the work runs under [`Leadership::token`].
pub struct Leadership {
    token: CancellationToken,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    lease: String,
    identity: String,
}

impl Leadership {
    /// Cancelled when leadership is lost or the component shuts down.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Whether leadership has been lost so far.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops renewing and, if the lease is still ours, releases it. Returns
    /// [`LeaderError::Lost`] when leadership had been lost, so the caller can exit non-zero.
    pub async fn step_down(self) -> Result<(), LeaderError> {
        self.stop.cancel();
        // The renew loop releases the lease on its way out; a panic there is a bug, not a
        // lost lease, so only its outcome flag matters.
        let _ = self.renewer.await;
        if self.lost.load(Ordering::SeqCst) {
            Err(LeaderError::Lost {
                lease: self.lease,
                identity: self.identity,
            })
        } else {
            Ok(())
        }
    }
}

enum RoundResult {
    Leader,
    HeldBy(String),
}

/// One `tryAcquireOrRenew`: read, decide, write with the read resourceVersion.
async fn round<L: LeaseLock>(
    lock: &L,
    config: &ElectionConfig,
    observed: &mut Observed,
) -> Result<RoundResult, LockError> {
    let current = lock.get().await?;
    let now_mono = Instant::now();
    let spec_of = |l: &Option<Lease>| l.as_ref().and_then(|l| l.spec.clone());
    if spec_of(&current) != spec_of(&observed.lease) {
        observed.since = now_mono;
    }
    observed.lease = current;
    let spec = spec_of(&observed.lease);
    let decision = decide(spec.as_ref(), now_mono - observed.since, &config.identity);
    if let Decision::Wait { holder } = decision {
        return Ok(RoundResult::HeldBy(holder));
    }
    let desired = desired_spec(
        spec.as_ref(),
        &decision,
        &config.identity,
        jiff::Timestamp::now(),
        config.lease_duration,
    );
    let written = match (&decision, &observed.lease) {
        (Decision::Create, _) | (_, None) => {
            lock.create(Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(desired),
            })
            .await?
        }
        (_, Some(existing)) => {
            let mut lease = existing.clone();
            lease.spec = Some(desired);
            lock.update(lease).await?
        }
    };
    observed.lease = Some(written);
    observed.since = Instant::now();
    Ok(RoundResult::Leader)
}

/// Renews every retry period; if a renewal does not succeed within the renew deadline,
/// leadership is lost: flag it and cancel the work. On `stop`, releases the lease.
async fn renew_loop<L: LeaseLock>(
    lock: Arc<L>,
    config: ElectionConfig,
    mut observed: Observed,
    work: CancellationToken,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let lease = config.lease_key();
    'leading: loop {
        tokio::select! {
            _ = stop.cancelled() => break 'leading,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
        let deadline = Instant::now() + config.renew_deadline;
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, round(&*lock, &config, &mut observed)).await;
            match attempt {
                Ok(Ok(RoundResult::Leader)) => continue 'leading,
                Ok(Ok(RoundResult::HeldBy(holder))) => {
                    tracing::warn!(lease, holder, "the lease was taken over");
                }
                Ok(Err(e)) => tracing::warn!(lease, error = %e, "failed to renew lease"),
                Err(_) => tracing::warn!(lease, "renewing the lease timed out"),
            }
            if Instant::now() >= deadline {
                tracing::error!(lease, identity = config.identity, "leader election lost");
                lost.store(true, Ordering::SeqCst);
                work.cancel();
                if let Some(l) = &observed.lease {
                    announce(&*lock, &config, l, "stopped leading").await;
                }
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => break 'leading,
                _ = tokio::time::sleep_until((Instant::now() + config.retry_period).min(deadline)) => {}
            }
        }
    }
    work.cancel();
    release(&*lock, &config, &observed).await;
}

/// Gives the lease up if we still hold it, so the next candidate need not wait for expiry.
async fn release<L: LeaseLock>(lock: &L, config: &ElectionConfig, observed: &Observed) {
    let lease_key = config.lease_key();
    let Some(mut lease) = observed.lease.clone() else {
        return;
    };
    let ours = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(config.identity.as_str());
    if !ours {
        return;
    }
    let Some(spec) = lease.spec.as_ref() else {
        return;
    };
    lease.spec = Some(released_spec(spec, jiff::Timestamp::now()));
    let bounded = tokio::time::timeout(config.renew_deadline, lock.update(lease.clone())).await;
    match bounded {
        Ok(Ok(_)) => {
            tracing::info!(lease = lease_key, "released leader lease");
            announce(lock, config, &lease, "stopped leading").await;
        }
        Ok(Err(e)) => tracing::warn!(lease = lease_key, error = %e, "failed to release lease"),
        Err(_) => tracing::warn!(lease = lease_key, "releasing the lease timed out"),
    }
}

/// Records `<identity> <what>`, bounded in time: with the apiserver unreachable (the usual
/// reason leadership is lost) the event must not hold up stepping down.
async fn announce<L: LeaseLock>(lock: &L, config: &ElectionConfig, lease: &Lease, what: &str) {
    let message = format!("{} {what}", config.identity);
    let _ = tokio::time::timeout(config.retry_period, lock.announce(lease, message)).await;
}

fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * (JITTER_FACTOR - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const ME: &str = "me_1";

    fn spec(holder: &str, duration: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(transitions),
            acquire_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        let other = spec("other_2", 15, 3);
        let mine = spec(ME, 15, 3);
        let released = spec("", 1, 3);
        let no_duration = LeaseSpec {
            holder_identity: Some("other_2".into()),
            ..Default::default()
        };
        let empty = LeaseSpec::default();
        let wait = Decision::Wait {
            holder: "other_2".into(),
        };
        let cases: Vec<(&str, Option<&LeaseSpec>, Duration, Decision)> = vec![
            ("no lease yet", None, s(0), Decision::Create),
            ("ours, fresh", Some(&mine), s(0), Decision::Renew),
            ("ours, even if stale", Some(&mine), s(100), Decision::Renew),
            ("other, live", Some(&other), s(14), wait.clone()),
            ("other, expired", Some(&other), s(15), Decision::Acquire),
            ("released", Some(&released), s(0), Decision::Acquire),
            ("no holder field", Some(&empty), s(0), Decision::Acquire),
            (
                "holder without duration",
                Some(&no_duration),
                s(0),
                Decision::Acquire,
            ),
        ];
        for (name, current, unchanged_for, want) in cases {
            assert_eq!(decide(current, unchanged_for, ME), want, "{name}");
        }
    }

    #[test]
    fn desired_specs_count_transitions() {
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let d = Duration::from_secs(15);
        let created = desired_spec(None, &Decision::Create, ME, now, d);
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.holder_identity.as_deref(), Some(ME));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.renew_time, Some(MicroTime(now)));

        let other = spec("other_2", 15, 3);
        let taken = desired_spec(Some(&other), &Decision::Acquire, ME, now, d);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));

        let mine = spec(ME, 15, 3);
        let renewed = desired_spec(Some(&mine), &Decision::Renew, ME, now, d);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let released = released_spec(&renewed, now);
        assert_eq!(released.holder_identity.as_deref(), Some(""));
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
    }

    #[test]
    fn config_validation() {
        let mut c = ElectionConfig::new("kube-scheduler");
        assert!(c.validate().is_ok());
        assert!(c.identity.contains('_'));
        c.renew_deadline = Duration::from_secs(20);
        assert!(c.validate().is_err());
        c.renew_deadline = Duration::from_secs(2);
        assert!(
            c.validate().is_err(),
            "renew deadline must exceed 1.2 x retry"
        );
    }

    #[test]
    fn duration_flags() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("40s", Ok(s(40))),
            ("5m0s", Ok(s(300))),
            ("1h30m", Ok(s(5400))),
            ("500ms", Ok(Duration::from_millis(500))),
            ("0", Ok(Duration::ZERO)),
        ] {
            assert_eq!(parse_duration(text), want, "{text}");
        }
        for bad in ["", "15", "-1s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_default_to_upstream() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            le: LeaderElectionArgs,
        }
        let cli = Cli::parse_from(["x"]);
        assert!(cli.le.leader_elect);
        let e = cli.le.election("kube-scheduler");
        assert_eq!(
            (e.namespace.as_str(), e.name.as_str()),
            ("kube-system", "kube-scheduler")
        );
        assert_eq!(e.lease_duration, DEFAULT_LEASE_DURATION);
        assert_eq!(e.renew_deadline, DEFAULT_RENEW_DEADLINE);
        assert_eq!(e.retry_period, DEFAULT_RETRY_PERIOD);
        assert!(
            !Cli::parse_from(["x", "--leader-elect=false"])
                .le
                .leader_elect
        );
        assert!(Cli::parse_from(["x", "--leader-elect"]).le.leader_elect);
        assert!(Cli::try_parse_from(["x", "--leader-elect-retry-period=soon"]).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn run_gives_the_work_a_token_and_its_output_back() {
        let lock = Arc::new(FakeLock::default());
        let shutdown = CancellationToken::new();
        let e = LeaderElector::new(lock.clone(), config("a")).unwrap();
        let s = shutdown.clone();
        let out = e
            .run(&shutdown, |token| async move {
                s.cancel();
                token.cancelled().await;
                7
            })
            .await
            .unwrap();
        assert_eq!(out, Some(7));
        assert_eq!(lock.spec().unwrap().holder_identity.as_deref(), Some(""));
    }

    /// An in-memory apiserver holding one lease, with optimistic concurrency and a switch that
    /// makes every request fail (a partition).
    #[derive(Default)]
    struct FakeLock {
        state: Mutex<(Option<Lease>, u64)>,
        down: AtomicBool,
        announcements: Mutex<Vec<String>>,
    }

    impl FakeLock {
        fn spec(&self) -> Option<LeaseSpec> {
            self.state
                .lock()
                .unwrap()
                .0
                .as_ref()
                .and_then(|l| l.spec.clone())
        }
        fn check(&self) -> Result<(), LockError> {
            if self.down.load(Ordering::SeqCst) {
                Err(LockError::Timeout)
            } else {
                Ok(())
            }
        }
    }

    impl LeaseLock for Arc<FakeLock> {
        async fn get(&self) -> Result<Option<Lease>, LockError> {
            self.check()?;
            Ok(self.state.lock().unwrap().0.clone())
        }
        async fn create(&self, mut lease: Lease) -> Result<Lease, LockError> {
            self.check()?;
            let mut st = self.state.lock().unwrap();
            if st.0.is_some() {
                return Err(LockError::Conflict);
            }
            st.1 += 1;
            lease.metadata.resource_version = Some(st.1.to_string());
            st.0 = Some(lease.clone());
            Ok(lease)
        }
        async fn update(&self, mut lease: Lease) -> Result<Lease, LockError> {
            self.check()?;
            let mut st = self.state.lock().unwrap();
            let current_rv =
                st.0.as_ref()
                    .and_then(|l| l.metadata.resource_version.clone());
            if current_rv != lease.metadata.resource_version {
                return Err(LockError::Conflict);
            }
            st.1 += 1;
            lease.metadata.resource_version = Some(st.1.to_string());
            st.0 = Some(lease.clone());
            Ok(lease)
        }
        async fn announce(&self, _lease: &Lease, message: String) {
            self.announcements.lock().unwrap().push(message);
        }
    }

    fn config(identity: &str) -> ElectionConfig {
        ElectionConfig {
            identity: identity.into(),
            ..ElectionConfig::new("test")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_then_clean_handover() {
        let lock = Arc::new(FakeLock::default());
        let shutdown_a = CancellationToken::new();
        let a = LeaderElector::new(lock.clone(), config("a")).unwrap();
        let leading_a = a.acquire(&shutdown_a).await.expect("a leads");
        assert_eq!(lock.spec().unwrap().holder_identity.as_deref(), Some("a"));

        // b waits while a renews, however long that goes on.
        let shutdown_b = CancellationToken::new();
        let b = LeaderElector::new(lock.clone(), config("b")).unwrap();
        let sb = shutdown_b.clone();
        let b_task = tokio::spawn(async move { b.acquire(&sb).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!b_task.is_finished());
        assert!(!leading_a.token().is_cancelled());
        assert_eq!(lock.spec().unwrap().holder_identity.as_deref(), Some("a"));

        // a shuts down cleanly: the lease is released and b takes over without waiting 15 s.
        shutdown_a.cancel();
        assert!(leading_a.token().is_cancelled());
        leading_a.step_down().await.expect("a stepped down cleanly");
        assert_eq!(lock.spec().unwrap().holder_identity.as_deref(), Some(""));
        let leading_b = b_task.await.unwrap().expect("b leads");
        let spec = lock.spec().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
        shutdown_b.cancel();
        leading_b.step_down().await.unwrap();
        let said = lock.announcements.lock().unwrap().clone();
        assert_eq!(
            said,
            [
                "a became leader",
                "a stopped leading",
                "b became leader",
                "b stopped leading"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn partition_loses_leadership_and_the_lease_expires_to_another() {
        let lock = Arc::new(FakeLock::default());
        let shutdown = CancellationToken::new();
        let a = LeaderElector::new(lock.clone(), config("a")).unwrap();
        let leading = a.acquire(&shutdown).await.unwrap();
        let token = leading.token();

        lock.down.store(true, Ordering::SeqCst);
        token.cancelled().await;
        assert!(leading.is_lost());
        assert!(!shutdown.is_cancelled(), "only the work is cancelled");
        assert!(matches!(
            leading.step_down().await,
            Err(LeaderError::Lost { .. })
        ));

        // The partition heals; the stale lease still names a, and b must wait for it to expire.
        lock.down.store(false, Ordering::SeqCst);
        let b = LeaderElector::new(lock.clone(), config("b")).unwrap();
        let before = Instant::now();
        let leading_b = b.acquire(&shutdown).await.unwrap();
        assert!(Instant::now() - before >= DEFAULT_LEASE_DURATION);
        assert_eq!(lock.spec().unwrap().lease_transitions, Some(1));
        shutdown.cancel();
        leading_b.step_down().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_before_acquiring_returns_none() {
        let lock = Arc::new(FakeLock::default());
        let other = LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        lock.create(Lease {
            metadata: ObjectMeta::default(),
            spec: Some(other),
        })
        .await
        .unwrap();
        let shutdown = CancellationToken::new();
        let e = LeaderElector::new(lock.clone(), config("a")).unwrap();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { e.acquire(&s).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        shutdown.cancel();
        assert!(task.await.unwrap().is_none());
    }
}
