//! `TenantRegistry`: finds or starts the [`ConnectionActor`] of an organization.
//!
//! The organization is read once, when its actor starts — from the shared
//! tier cache, or the store on a cache miss ([`TierLookup`]); after that the
//! actor's copy is the one in use and changes reach it as messages: directly
//! from this replica's writers, from other replicas through the cache's
//! invalidation channel, and from a periodic re-verification (`refresh`).

pub mod refresh;
pub mod unknown;

use std::{sync::Arc, time::Instant};

use actix::{Addr, Arbiter, ArbiterHandle, Supervisor};
use dashmap::DashMap;

use super::enforcement::EnforcementSwitch;
use super::{
    connection_actor::{ConnectionActor, SharedPolicy},
    tier_lookup::{Layer, TierLookup},
};
use crate::{
    domain::{catalog::TierCatalog, org_id::OrgId, organization::Organization, time::UnixMillis},
    store::{Store, StoreError},
    tier_cache::{NoTierCache, TierCache},
};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Cheap to clone; all clones share one map.
#[derive(Clone)]
pub struct TenantRegistry {
    actors: Arc<DashMap<OrgId, Addr<ConnectionActor>>>,
    catalog: Arc<TierCatalog>,
    /// The shared cache and the store, below the actors.
    lookup: Arc<TierLookup>,
    /// When each actor's record was last verified (see `refresh`).
    freshness: Arc<refresh::Freshness>,
    /// One cold lookup per organization at a time: concurrent first
    /// connections wait for it instead of all reading the cache and store.
    /// An entry lives only while a lookup runs or is waited for.
    loading: Arc<LookupGates>,
    /// Organizations recently found missing.
    unknown: Arc<unknown::UnknownOrgs>,
    /// Tenant actors run here, whichever thread asks for them.
    arbiter: ArbiterHandle,
    shared: Option<SharedPolicy>,
    /// Named in FREE's forced-upgrade refusals.
    upgrade_url: Arc<str>,
    /// Shadow or enforce, for every tenant actor.
    enforcement: EnforcementSwitch,
}

impl TenantRegistry {
    /// Must be called inside an actix system: tenant actors will run on the
    /// current arbiter.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<TierCatalog>) -> Self {
        Self {
            actors: Arc::new(DashMap::new()),
            catalog,
            lookup: Arc::new(TierLookup::new(store, Arc::new(NoTierCache))),
            freshness: Arc::default(),
            loading: Arc::default(),
            unknown: Arc::default(),
            arbiter: Arbiter::current(),
            shared: None,
            upgrade_url: Arc::from(""),
            enforcement: EnforcementSwitch::default(),
        }
    }

    /// The platform's enforcement switch every tenant actor follows. Call
    /// before cloning the registry.
    pub fn with_enforcement(mut self, switch: EnforcementSwitch) -> Self {
        self.enforcement = switch;
        self
    }

    /// The upgrade URL tenant actors name in forced-upgrade refusals. Call
    /// before cloning the registry.
    pub fn with_upgrade_url(mut self, url: &str) -> Self {
        self.upgrade_url = Arc::from(url);
        self
    }

    /// Puts a shared tier cache between the actors and the store. Call before
    /// cloning the registry.
    pub fn with_tier_cache(mut self, cache: Arc<dyn TierCache>) -> Self {
        self.lookup = Arc::new(TierLookup::new(self.lookup.store().clone(), cache));
        self
    }

    /// Tenant actors started from now on share their limits with other
    /// replicas through `policy`.
    pub fn with_shared_limits(mut self, policy: SharedPolicy) -> Self {
        self.shared = Some(policy);
        self
    }

    /// The organization's actor, started on first use; `None` for an unknown
    /// organization. May be called from any thread or runtime.
    pub async fn tenant(&self, id: &OrgId) -> Result<Option<Addr<ConnectionActor>>, RegistryError> {
        if let Some(addr) = self.actors.get(id) {
            if addr.connected() {
                self.lookup.hit_process();
                return Ok(Some(addr.clone()));
            }
        }
        Ok(self.start_tenant(id).await?.map(|(addr, _)| addr))
    }

    /// Like [`tenant`](Self::tenant), also saying which layer answered.
    pub async fn tenant_with_layer(
        &self,
        id: &OrgId,
    ) -> Result<Option<(Addr<ConnectionActor>, Layer)>, RegistryError> {
        if let Some(addr) = self.actors.get(id) {
            if addr.connected() {
                self.lookup.hit_process();
                return Ok(Some((addr.clone(), Layer::Process)));
            }
        }
        self.start_tenant(id).await
    }

    async fn start_tenant(
        &self,
        id: &OrgId,
    ) -> Result<Option<(Addr<ConnectionActor>, Layer)>, RegistryError> {
        if self.unknown.contains(id, Instant::now()) {
            self.lookup.hit_unknown();
            return Ok(None);
        }
        let gate = GateRelease {
            loading: &self.loading,
            id,
            gate: self.loading.entry(id.clone()).or_default().clone(),
        };
        let _loading = gate.gate.lock().await;
        self.load_and_start(id).await
    }

    async fn load_and_start(
        &self,
        id: &OrgId,
    ) -> Result<Option<(Addr<ConnectionActor>, Layer)>, RegistryError> {
        // Started by a concurrent caller while this one waited.
        if let Some(addr) = self.actors.get(id) {
            if addr.connected() {
                self.lookup.hit_process();
                return Ok(Some((addr.clone(), Layer::Process)));
            }
        }
        let generation = self.freshness.generation();
        let Some((org, layer)) = self.lookup.load(id).await? else {
            // Unless it was created while the lookup ran.
            if self.freshness.generation() == generation {
                self.unknown.remember(id, Instant::now());
            }
            return Ok(None);
        };
        self.freshness.verified(&org, UnixMillis::now());
        let catalog = self.catalog.clone();
        let arbiter = &self.arbiter;
        let shared = &self.shared;
        let url = &self.upgrade_url;
        let mode = &self.enforcement;
        // Two callers may race here; the entry API keeps exactly one actor.
        let addr = self
            .actors
            .entry(id.clone())
            .and_modify(|existing| {
                if !existing.connected() {
                    *existing = start(
                        arbiter,
                        org.clone(),
                        catalog.clone(),
                        shared.clone(),
                        (url.clone(), mode.clone()),
                    );
                }
            })
            .or_insert_with(|| {
                start(
                    arbiter,
                    org,
                    catalog,
                    shared.clone(),
                    (url.clone(), mode.clone()),
                )
            })
            .clone();
        // An invalidation that arrived while this record was being read found
        // no actor to reload; reload now so the change is not missed.
        if self.freshness.generation() != generation {
            self.reload_in_background(id.clone());
        }
        Ok(Some((addr, layer)))
    }

    /// Tells a running actor (if any) about a changed organization record,
    /// then, in the background, invalidates the shared cache and announces
    /// the change to the other replicas. Writers that want to wait for the
    /// announcement use [`publish_change`](Self::publish_change).
    pub fn organization_changed(&self, org: Organization) {
        self.apply(org.clone(), UnixMillis::now(), true);
        self.invalidate_in_background(org.id);
    }

    /// Organizations being looked up right now (for tests: the map of
    /// lookups in progress must not grow with every name ever tried).
    pub fn lookups_in_progress(&self) -> usize {
        self.loading.len()
    }

    /// Number of tenant actors started.
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }
}

type LookupGates = DashMap<OrgId, Arc<tokio::sync::Mutex<()>>>;

/// One caller's use of an organization's lookup gate. The last one out
/// (done or cancelled) removes the gate: organization ids come from
/// clients, and the map must not keep one per name ever tried.
struct GateRelease<'a> {
    loading: &'a LookupGates,
    id: &'a OrgId,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for GateRelease<'_> {
    fn drop(&mut self) {
        // Two references: the map's and this one.
        self.loading.remove_if(self.id, |_, g| {
            Arc::ptr_eq(g, &self.gate) && Arc::strong_count(g) == 2
        });
    }
}

fn start(
    arbiter: &ArbiterHandle,
    org: Organization,
    catalog: Arc<TierCatalog>,
    shared: Option<SharedPolicy>,
    (upgrade_url, enforcement): (Arc<str>, EnforcementSwitch),
) -> Addr<ConnectionActor> {
    Supervisor::start_in_arbiter(arbiter, move |_| {
        ConnectionActor::new(org, catalog, shared)
            .with_upgrade_url(upgrade_url)
            .with_enforcement(enforcement)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::tier::Tier, memory_store::MemoryStore, usage_accumulator::tests::catalog};

    #[actix::test]
    async fn a_missing_organization_is_remembered_briefly_and_forgotten_when_created() {
        let store = Arc::new(MemoryStore::default());
        let registry = TenantRegistry::new(store.clone(), catalog());
        let acme = OrgId::parse("acme").expect("org id");

        assert!(registry.tenant(&acme).await.expect("lookup").is_none());
        assert_eq!(registry.lookups_in_progress(), 0, "no gate left behind");

        // Written behind the registry's back: the remembered miss answers,
        // without reading the store again.
        let org = Organization::for_test("acme", Tier::Free);
        store.create_org(&org).await.expect("create");
        assert!(registry.tenant(&acme).await.expect("lookup").is_none());

        // Created through this replica (or announced by another): known at once.
        registry.organization_changed(org);
        assert!(registry.tenant(&acme).await.expect("lookup").is_some());
        assert_eq!(registry.lookups_in_progress(), 0);
    }
}
