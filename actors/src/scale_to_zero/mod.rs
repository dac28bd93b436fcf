//! Scale-to-zero: suspends idle databases and wakes them on the next
//! connection (docs/scale-to-zero.md).
//!
//! [`ScaleToZero`] is the per-replica coordinator. It keeps one wake per
//! organization in flight (a shared future every waiting connection awaits,
//! like Knative's activator) and decides, on each tick, which idle
//! organizations to suspend. The state lives on the organization record;
//! every step two replicas must not both take (running a suspend, running a
//! wake) is a [`Store::claim`] named after the state it starts from, so of
//! all replicas exactly one runs it.

pub mod driver;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use futures_util::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use serde::Serialize;

pub use driver::{ComputeDriver, DriverError, DriverStatus};

use crate::{
    domain::{
        catalog::TierCatalog,
        compute::{Compute, ComputeState, Phase},
        org_id::OrgId,
        organization::Organization,
        time::UnixMillis,
    },
    shared_limits::SharedLimits,
    store::{Claim, Store, StoreError},
    tenant::TenantRegistry,
};

/// State writes retried when the record changes under them.
const WRITE_ATTEMPTS: usize = 5;
/// How often a waiter re-reads the record while another replica (or a
/// suspend) holds the step it waits for.
const POLL: Duration = Duration::from_millis(20);
/// Successors of one expired claim followed in one attempt (each is a
/// replica that died holding the step; more in a row means something else
/// is wrong).
const CLAIM_SUCCESSIONS: usize = 8;

/// `[scale_to_zero]`.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub enabled: bool,
    /// No session on any replica for this long: suspend.
    pub idle_after: Duration,
    /// A connection waits this long for a wake, then gets 57P03.
    pub wake_deadline: Duration,
    /// A replica that took a suspend or a wake and has not finished within
    /// this is presumed dead: another replica takes the step over.
    pub step_lease: Duration,
}

/// Why a database could not be woken (for the client's 57P03).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    #[error("organization `{0}` not found")]
    NotFound(OrgId),
    #[error("store: {0}")]
    Store(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("the wake did not finish within the {0:?} step lease")]
    Stalled(Duration),
}

impl From<StoreError> for WakeError {
    fn from(e: StoreError) -> Self {
        WakeError::Store(e.to_string())
    }
}

/// How a database came to accept connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Woken {
    /// `true`: this wake ran the driver here; `false`: it was already
    /// active or another replica woke it.
    pub ran_driver: bool,
    pub driver_ms: u64,
}

type WakeFuture = Shared<BoxFuture<'static, Result<Woken, WakeError>>>;

/// What a tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// Organizations not suspended whose driver can suspend and whose tier
    /// allows it (suspended ones are not read).
    pub eligible: usize,
    pub suspended: Vec<OrgId>,
    pub failed: Vec<OrgId>,
}

/// Why an operator's suspend or wake was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("organization `{0}` not found")]
    NotFound(OrgId),
    #[error("organization `{0}` runs on the always_on driver")]
    AlwaysOn(OrgId),
    #[error("organization `{org}` is {phase}")]
    Busy { org: OrgId, phase: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ScaleToZero {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    tenants: TenantRegistry,
    driver: Arc<dyn ComputeDriver>,
    catalog: Arc<TierCatalog>,
    config: ScaleConfig,
    /// Wakes run on this runtime, not on the session thread that asked.
    runtime: tokio::runtime::Handle,
    wakes: DashMap<OrgId, WakeFuture>,
    /// When this replica last saw a session of the organization.
    last_active: DashMap<OrgId, UnixMillis>,
    /// Org-wide connection counts (several replicas).
    shared: Option<Arc<dyn SharedLimits>>,
}

impl ScaleToZero {
    /// Must be called on the runtime wakes and suspends should run on.
    pub fn new(
        store: Arc<dyn Store>,
        tenants: TenantRegistry,
        driver: Arc<dyn ComputeDriver>,
        catalog: Arc<TierCatalog>,
        config: ScaleConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                tenants,
                driver,
                catalog,
                config,
                runtime: tokio::runtime::Handle::current(),
                wakes: DashMap::new(),
                last_active: DashMap::new(),
                shared: None,
            }),
        }
    }

    /// Idle checks also ask the shared state whether any replica holds a
    /// connection. Call before cloning.
    pub fn with_shared_limits(mut self, shared: Option<Arc<dyn SharedLimits>>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.shared = shared;
        }
        self
    }

    /// Whether any replica holds a connection of `id` now; `None` when the
    /// shared state cannot say (then nothing is suspended).
    async fn busy_elsewhere(&self, id: &OrgId) -> Option<bool> {
        let Some(shared) = &self.inner.shared else {
            return Some(false);
        };
        match shared.connections(id).await {
            Ok(n) => Some(n > 0),
            Err(e) => {
                tracing::debug!(org = %id, error = %e, "org-wide connection count unavailable; not suspending");
                None
            }
        }
    }

    pub fn config(&self) -> &ScaleConfig {
        &self.inner.config
    }

    /// Whether a connection for `org` (as its tenant actor has it) must wait
    /// for a wake first.
    pub fn needs_wake(org: &Organization) -> bool {
        org.compute.spec.can_suspend() && org.compute.state.phase != Phase::Active
    }

    /// Wakes `org` unless a wake is already in flight on this replica, and
    /// waits for that one wake. The wake goes on after the caller stops
    /// waiting (a client past its deadline), so the next connection finds
    /// it done or still running, never started twice.
    pub async fn ensure_awake(&self, org: &OrgId) -> Result<Woken, WakeError> {
        self.wake_future(org).await
    }

    /// Starts a wake (if none is in flight) without waiting for it.
    pub fn start_wake(&self, org: &OrgId) {
        drop(self.wake_future(org));
    }

    fn wake_future(&self, org: &OrgId) -> WakeFuture {
        self.inner
            .wakes
            .entry(org.clone())
            .or_insert_with(|| {
                let this = self.clone();
                let id = org.clone();
                let task = self.inner.runtime.spawn(async move {
                    let result = this.run_wake(&id).await;
                    this.inner.wakes.remove(&id);
                    result
                });
                let stalled = WakeError::Stalled(self.inner.config.step_lease);
                async move { task.await.unwrap_or(Err(stalled)) }
                    .boxed()
                    .shared()
            })
            .clone()
    }

    /// Brings the stored state to `active`: waits out a suspend in
    /// progress, runs the driver if this replica wins the wake's claim, or
    /// waits for the replica that did.
    async fn run_wake(&self, id: &OrgId) -> Result<Woken, WakeError> {
        let lease = self.inner.config.step_lease;
        let started = Instant::now();
        // Long enough for a suspend and a wake by other replicas.
        let give_up = lease * 3;
        loop {
            let org = self
                .inner
                .store
                .get_org(id)
                .await?
                .ok_or_else(|| WakeError::NotFound(id.clone()))?;
            let state = &org.compute.state;
            let now = UnixMillis::now();
            let stale = now.0 >= state.since.0.saturating_add(millis(lease));
            let claim = step_claim(id, state);
            match state.phase {
                Phase::Active => {
                    // Announced late to this replica's actor, perhaps.
                    self.inner.tenants.organization_changed(org.clone());
                    return Ok(Woken {
                        ran_driver: false,
                        driver_ms: 0,
                    });
                }
                Phase::Suspended => {}
                // The replica waking it died: take the wake over.
                Phase::Waking if stale => {}
                // A suspend that never finished: finish it first, so the
                // driver's stop cannot land after this wake's start.
                Phase::Suspending if stale => {
                    if !self.take_over_suspend(org).await {
                        tokio::time::sleep(POLL).await;
                    }
                    continue;
                }
                Phase::Waking | Phase::Suspending => {
                    if started.elapsed() > give_up {
                        return Err(WakeError::Stalled(give_up));
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            }
            match self.claim_step(&claim, now).await? {
                Claim::Won => return self.wake_now(org).await,
                Claim::Held(_) => {
                    if started.elapsed() > give_up {
                        return Err(WakeError::Stalled(give_up));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// Runs the driver's wake; the claim for it is held.
    async fn wake_now(&self, org: Organization) -> Result<Woken, WakeError> {
        let id = org.id.clone();
        let spec = org.compute.spec.clone();
        self.write_state(&id, |c, now| c.enter(Phase::Waking, now))
            .await?;
        let started = Instant::now();
        let result = self.inner.driver.wake(&org).await;
        let driver_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let driver_name = spec.driver_name();
        metrics::histogram!("dynabase_scale_wake_driver_seconds", "driver" => driver_name, "outcome" => if result.is_ok() { "ok" } else { "error" })
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.write_state(&id, |c, now| {
                    c.enter(Phase::Active, now);
                    c.state.cold_starts += 1;
                    c.state.last_wake_ms = Some(driver_ms);
                    c.state.last_error = None;
                })
                .await?;
                self.inner.last_active.insert(id.clone(), UnixMillis::now());
                metrics::counter!("dynabase_scale_wakes_total", "driver" => driver_name, "outcome" => "ok").increment(1);
                tracing::info!(org = %id, driver = driver_name, driver_ms, "database woken");
                Ok(Woken {
                    ran_driver: true,
                    driver_ms,
                })
            }
            Err(e) => {
                metrics::counter!("dynabase_scale_wakes_total", "driver" => driver_name, "outcome" => "error").increment(1);
                tracing::warn!(org = %id, driver = driver_name, driver_ms, error = %e, "database wake failed; back to suspended");
                let detail = e.to_string();
                self.write_state(&id, |c, now| {
                    c.enter(Phase::Suspended, now);
                    c.state.last_error = Some(format!("wake: {detail}"));
                })
                .await?;
                Err(e.into())
            }
        }
    }

    /// Reads, changes and compare-and-sets the org's compute section, then
    /// tells this replica's actor and announces the change to the others.
    async fn write_state(
        &self,
        id: &OrgId,
        change: impl Fn(&mut Compute, UnixMillis),
    ) -> Result<Organization, StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            let mut org = self
                .inner
                .store
                .get_org(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            let seen = org.updated_at;
            let now = UnixMillis(UnixMillis::now().0.max(seen.0 + 1));
            change(&mut org.compute, now);
            org.updated_at = now;
            if self.inner.store.update_org_if_unchanged(&org, seen).await? {
                if let Err(e) = self.inner.tenants.publish_change(org.clone()).await {
                    tracing::warn!(org = %id, error = %e, "compute state announcement failed; retried in the background");
                }
                return Ok(org);
            }
        }
        Err(StoreError::Unavailable(format!(
            "organization `{id}` kept changing while its compute state was written"
        )))
    }

    /// Suspends idle organizations. `active`: organizations with a session
    /// on this replica (and, with shared state, on any replica) now.
    pub async fn tick(
        &self,
        now: UnixMillis,
        active: &HashSet<OrgId>,
    ) -> Result<TickReport, StoreError> {
        let mut report = TickReport::default();
        if !self.inner.config.enabled {
            return Ok(report);
        }
        let idle_after = millis(self.inner.config.idle_after);
        let lease = millis(self.inner.config.step_lease);
        for org in self.inner.store.awake_suspendable_orgs().await? {
            if !self.eligible(&org) {
                continue;
            }
            report.eligible += 1;
            let id = org.id.clone();
            if active.contains(&id) {
                self.inner.last_active.insert(id, now);
                continue;
            }
            let state = &org.compute.state;
            let due = match state.phase {
                Phase::Active => {
                    let seen = self.inner.last_active.get(&id).map_or(state.since, |t| *t);
                    now.0 >= seen.max(state.since).0.saturating_add(idle_after)
                }
                // A replica died half-way through a suspend, or through a
                // wake nobody has connected for since: finish the one,
                // undo the other (the cluster may have been started).
                Phase::Suspending | Phase::Waking => now.0 >= state.since.0.saturating_add(lease),
                Phase::Suspended => false,
            };
            if !due || self.inner.wakes.contains_key(&id) {
                continue;
            }
            match self.busy_elsewhere(&id).await {
                Some(false) => {}
                Some(true) => {
                    self.inner.last_active.insert(id, now);
                    continue;
                }
                None => continue,
            }
            match self.suspend(org, now, "idle").await {
                Ok(true) => report.suspended.push(id),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(org = %id, error = %e, "suspend failed");
                    report.failed.push(id);
                }
            }
        }
        Ok(report)
    }

    /// Whether idle detection applies to `org`.
    pub fn eligible(&self, org: &Organization) -> bool {
        self.inner.config.enabled
            && org.compute.spec.can_suspend()
            && self.inner.catalog.get(org.tier).scale_to_zero
    }

    /// Suspends `org` if this replica wins the claim for its current state.
    /// `Ok(false)`: another replica has it.
    async fn suspend(
        &self,
        org: Organization,
        now: UnixMillis,
        reason: &str,
    ) -> Result<bool, ControlError> {
        let name = step_claim(&org.id, &org.compute.state);
        if self.claim_step(&name, now).await? != Claim::Won {
            return Ok(false);
        }
        self.stop(org, reason).await?;
        Ok(true)
    }

    /// Runs the driver's suspend; the claim is held.
    async fn stop(&self, org: Organization, reason: &str) -> Result<(), ControlError> {
        let id = org.id.clone();
        let spec = org.compute.spec.clone();
        self.write_state(&id, |c, now| c.enter(Phase::Suspending, now))
            .await?;
        let started = Instant::now();
        match self.inner.driver.suspend(&org).await {
            Ok(()) => {
                self.write_state(&id, |c, now| {
                    c.enter(Phase::Suspended, now);
                    c.state.last_error = None;
                })
                .await?;
                metrics::counter!("dynabase_scale_suspends_total", "driver" => spec.driver_name(), "outcome" => "ok").increment(1);
                tracing::info!(org = %id, driver = spec.driver_name(), reason, driver_ms = started.elapsed().as_millis() as u64, "database suspended");
                Ok(())
            }
            Err(e) => {
                // A failed stop may still have stopped it (a command that
                // stopped and then failed, a takeover of a dead replica's
                // half-done stop): ask, so the record never says `active`
                // while the database is down. Unknown: still running.
                let phase = match self.inner.driver.status(&org).await {
                    Ok(DriverStatus::Stopped) => Phase::Suspended,
                    _ => Phase::Active,
                };
                let detail = e.to_string();
                self.write_state(&id, |c, now| {
                    c.enter(phase, now);
                    c.state.last_error = Some(format!("suspend: {detail}"));
                })
                .await?;
                metrics::counter!("dynabase_scale_suspends_total", "driver" => spec.driver_name(), "outcome" => "error").increment(1);
                Err(e.into())
            }
        }
    }

    /// A suspend whose replica died: finish it under a claim of its own.
    /// `false`: another replica has it (or it failed).
    async fn take_over_suspend(&self, org: Organization) -> bool {
        let id = org.id.clone();
        match self.suspend(org, UnixMillis::now(), "takeover").await {
            Ok(won) => won,
            Err(e) => {
                tracing::warn!(org = %id, error = %e, "taking over a suspend failed");
                false
            }
        }
    }

    /// Takes the step `name` for one lease. A claim whose lease has ended
    /// belongs to a replica that died between taking it and writing the
    /// state it leads to (a live one has written that state long before,
    /// and the name of the next step differs): its successor is
    /// `name~<lease end>`, a name every replica derives alike, so again
    /// exactly one of them takes the step over. Claims are unique inserts
    /// and never replaced (FerretDB v1's conditional updates are not atomic).
    async fn claim_step(&self, name: &str, now: UnixMillis) -> Result<Claim, StoreError> {
        let until = now.plus(self.inner.config.step_lease);
        let mut name = name.to_owned();
        for _ in 0..CLAIM_SUCCESSIONS {
            match self.inner.store.claim(&name, now, until).await? {
                Claim::Held(end) if end.0 <= now.0 => {
                    tracing::info!(org_step = %name, "a step's claim expired; taking it over");
                    name = format!("{name}~{}", end.0);
                }
                other => return Ok(other),
            }
        }
        Ok(Claim::Held(until))
    }

    /// `POST /admin/orgs/{id}/suspend`: suspends now, whatever the tier.
    pub async fn suspend_now(&self, id: &OrgId) -> Result<Organization, ControlError> {
        let org = self.current(id).await?;
        match org.compute.state.phase {
            Phase::Active => {}
            Phase::Suspended => return Ok(org),
            phase => {
                return Err(ControlError::Busy {
                    org: id.clone(),
                    phase: phase.as_str(),
                })
            }
        }
        if self.inner.wakes.contains_key(id) {
            return Err(ControlError::Busy {
                org: id.clone(),
                phase: Phase::Waking.as_str(),
            });
        }
        self.suspend(org, UnixMillis::now(), "operator").await?;
        self.current(id).await
    }

    /// The organization's record, if its driver can suspend.
    pub async fn current(&self, id: &OrgId) -> Result<Organization, ControlError> {
        let org = self
            .inner
            .store
            .get_org(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(id.clone()))?;
        if !org.compute.spec.can_suspend() {
            return Err(ControlError::AlwaysOn(id.clone()));
        }
        Ok(org)
    }
}

/// The claim for the step out of `state`: one name per stored state, so of
/// all replicas (and of a tick and a connection on one replica) exactly one
/// moves the record on. A stale `waking` is left by a wake (taken over by a
/// connection) or by a suspend (a tick undoing it): both share the name.
fn step_claim(id: &OrgId, state: &ComputeState) -> String {
    let step = match state.phase {
        Phase::Active | Phase::Suspending => "suspend",
        Phase::Suspended | Phase::Waking => "wake",
    };
    format!("{step}:{id}:{}:{}", state.since.0, state.phase.as_str())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
