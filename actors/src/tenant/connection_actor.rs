//! `ConnectionActor`: the one writer of an organization's tier and counters.
//!
//! Admission decisions are made here so that two connections racing for the
//! last slot see one consistent count.

use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, MessageResult, Supervised};
use arc_swap::ArcSwap;

use super::query_gate::{QueryGate, SharedGate};
use crate::domain::{
    catalog::{TierCatalog, TierLimits},
    organization::Organization,
    tier::Tier,
};

/// Asks for a connection slot.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Admission, ConnectionRefusal>")]
pub struct Admit;

/// A granted slot; give it back with [`Release`].
#[derive(Debug, Clone)]
pub struct Admission {
    pub organization: Organization,
    pub limits: TierLimits,
    /// The organization's query-rate gate; replaced in place on tier changes.
    pub gate: SharedGate,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefusal {
    #[error(
        "connection limit reached for organization {org}: {active} of {limit} connections on tier {tier}"
    )]
    LimitReached {
        org: String,
        tier: Tier,
        active: u32,
        limit: u32,
        /// The next tier up and its connection limit, for the upgrade hint.
        next: Option<(Tier, u32)>,
    },
}

/// Returns a slot taken with [`Admit`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Release;

/// Replaces the organization record (tier, upstream) after a change.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ApplyOrganization(pub Organization);

/// Reads the actor's state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "TenantSnapshot")]
pub struct Snapshot;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSnapshot {
    pub organization: Organization,
    pub active_connections: u32,
    pub admitted_total: u64,
    pub refused_total: u64,
}

/// One organization's run-time state.
pub struct ConnectionActor {
    organization: Organization,
    catalog: Arc<TierCatalog>,
    gate: SharedGate,
    active_connections: u32,
    admitted_total: u64,
    refused_total: u64,
}

impl ConnectionActor {
    pub fn new(organization: Organization, catalog: Arc<TierCatalog>) -> Self {
        let gate = Arc::new(ArcSwap::from_pointee(gate_for(&organization, &catalog)));
        Self {
            organization,
            catalog,
            gate,
            active_connections: 0,
            admitted_total: 0,
            refused_total: 0,
        }
    }

    fn limits(&self) -> &TierLimits {
        self.catalog.get(self.organization.tier)
    }
}

fn gate_for(org: &Organization, catalog: &TierCatalog) -> QueryGate {
    QueryGate::new(
        org.id.clone(),
        catalog.get(org.tier),
        org.tier.next().map(|t| catalog.get(t)),
    )
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;
}

impl Supervised for ConnectionActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(org = %self.organization.id, "tenant actor restarting");
    }
}

impl Handler<Admit> for ConnectionActor {
    type Result = Result<Admission, ConnectionRefusal>;

    fn handle(&mut self, _: Admit, _: &mut Context<Self>) -> Self::Result {
        let limits = self.limits().clone();
        if self.active_connections >= limits.max_connections {
            self.refused_total += 1;
            let tier = self.organization.tier;
            return Err(ConnectionRefusal::LimitReached {
                org: self.organization.id.to_string(),
                tier,
                active: self.active_connections,
                limit: limits.max_connections,
                next: tier
                    .next()
                    .map(|next| (next, self.catalog.get(next).max_connections)),
            });
        }
        self.active_connections += 1;
        self.admitted_total += 1;
        Ok(Admission {
            organization: self.organization.clone(),
            limits,
            gate: self.gate.clone(),
        })
    }
}

impl Handler<Release> for ConnectionActor {
    type Result = ();
    fn handle(&mut self, _: Release, _: &mut Context<Self>) {
        self.active_connections = self.active_connections.saturating_sub(1);
    }
}

impl Handler<ApplyOrganization> for ConnectionActor {
    type Result = ();
    fn handle(&mut self, msg: ApplyOrganization, _: &mut Context<Self>) {
        let tier_changed = msg.0.tier != self.organization.tier;
        self.organization = msg.0;
        if tier_changed {
            // Live sessions pick the new gate up on their next cycle.
            self.gate
                .store(Arc::new(gate_for(&self.organization, &self.catalog)));
        }
    }
}

impl Handler<Snapshot> for ConnectionActor {
    type Result = MessageResult<Snapshot>;
    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(TenantSnapshot {
            organization: self.organization.clone(),
            active_connections: self.active_connections,
            admitted_total: self.admitted_total,
            refused_total: self.refused_total,
        })
    }
}
