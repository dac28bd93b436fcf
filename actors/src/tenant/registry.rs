//! `TenantRegistry`: finds or starts the [`ConnectionActor`] of an organization.
//!
//! The organization is read from the store once, when its actor starts; after
//! that the actor's copy is the one in use and changes reach it as messages.

use std::sync::Arc;

use actix::{Addr, Arbiter, ArbiterHandle, Supervisor};
use dashmap::DashMap;

use super::connection_actor::{ApplyOrganization, ConnectionActor, SharedPolicy};
use crate::{
    domain::{catalog::TierCatalog, org_id::OrgId, organization::Organization},
    store::{Store, StoreError},
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
    store: Arc<dyn Store>,
    catalog: Arc<TierCatalog>,
    /// Tenant actors run here, whichever thread asks for them.
    arbiter: ArbiterHandle,
    shared: Option<SharedPolicy>,
}

impl TenantRegistry {
    /// Must be called inside an actix system: tenant actors will run on the
    /// current arbiter.
    pub fn new(store: Arc<dyn Store>, catalog: Arc<TierCatalog>) -> Self {
        Self {
            actors: Arc::new(DashMap::new()),
            store,
            catalog,
            arbiter: Arbiter::current(),
            shared: None,
        }
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
                return Ok(Some(addr.clone()));
            }
        }
        let Some(org) = self.store.get_org(id).await? else {
            return Ok(None);
        };
        let catalog = self.catalog.clone();
        let arbiter = &self.arbiter;
        let shared = &self.shared;
        // Two callers may race here; the entry API keeps exactly one actor.
        let addr = self
            .actors
            .entry(id.clone())
            .and_modify(|existing| {
                if !existing.connected() {
                    *existing = start(arbiter, org.clone(), catalog.clone(), shared.clone());
                }
            })
            .or_insert_with(|| start(arbiter, org, catalog, shared.clone()))
            .clone();
        Ok(Some(addr))
    }

    /// Tells a running actor (if any) about a changed organization record.
    pub fn organization_changed(&self, org: Organization) {
        if let Some(addr) = self.actors.get(&org.id) {
            addr.do_send(ApplyOrganization(org));
        }
    }

    /// Number of tenant actors started.
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }
}

fn start(
    arbiter: &ArbiterHandle,
    org: Organization,
    catalog: Arc<TierCatalog>,
    shared: Option<SharedPolicy>,
) -> Addr<ConnectionActor> {
    Supervisor::start_in_arbiter(arbiter, move |_| ConnectionActor::new(org, catalog, shared))
}
