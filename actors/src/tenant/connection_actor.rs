//! `ConnectionActor`: the one writer of an organization's tier and counters.
//!
//! Admission decisions are made here so that two connections racing for the
//! last slot see one consistent count. With shared limits (several
//! replicas), this actor also chooses how its organization's query rate is
//! enforced and keeps its replica's share up to date.

use std::{sync::Arc, time::Duration};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, Supervised,
    WrapFuture,
};
use arc_swap::ArcSwap;

use super::{
    enforcement::{Enforcement, EnforcementSwitch, ShadowCounts, ShadowModel},
    query_gate::{QueryGate, ShadowHook, SharedGate},
};
use crate::{
    domain::{
        catalog::{TierCatalog, TierLimits},
        organization::Organization,
        records::Period,
        spend::CapAction,
        tier::Tier,
        time::UnixMillis,
    },
    shared_limits::{SharedLimits, SyncRequest},
};

/// How limits are shared between replicas.
#[derive(Clone)]
pub struct SharedPolicy {
    pub shared: Arc<dyn SharedLimits>,
    /// Tiers below this QPS are checked centrally on every cycle; tiers at or
    /// above it enforce a local share refreshed every `sync_interval`.
    pub central_below_qps: u32,
    pub sync_interval: Duration,
}

/// A share change smaller than this keeps the current limiter (a new one
/// would start with a fresh burst).
const SHARE_HYSTERESIS: f64 = 0.05;

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
    /// The next tier up and its connection limit, for refusal hints.
    pub next: Option<(Tier, u32)>,
}

impl Admission {
    /// The refusal to give when the org-wide (all replicas) count is full.
    pub fn org_wide_limit_reached(&self) -> ConnectionRefusal {
        ConnectionRefusal::LimitReached {
            org: self.organization.id.to_string(),
            tier: self.organization.tier,
            active: self.limits.max_connections,
            limit: self.limits.max_connections,
            next: self.next,
        }
    }
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
    /// FREE's forced upgrade (DESIGN.md Q2): the org used more than its
    /// included hours this period and the soft period is over.
    #[error(
        "organization {org} used more than the {included} vCPU-hours included in tier FREE for {period}; after the soft period that ended {enforced_from}, new connections are refused until it upgrades or the period ends"
    )]
    ForcedUpgrade {
        org: String,
        period: String,
        included: String,
        enforced_from: String,
        upgrade_url: String,
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
    /// Shadow enforcement: connections and query cycles enforcement would
    /// have refused (this replica, since the actor started).
    pub shadow_refused_connections: u64,
    pub shadow_refused_query_cycles: u64,
}

/// One organization's run-time state.
pub struct ConnectionActor {
    organization: Organization,
    catalog: Arc<TierCatalog>,
    gate: SharedGate,
    shared: Option<SharedPolicy>,
    /// This replica's current share of the org's QPS (share mode).
    share: Option<f64>,
    active_connections: u32,
    admitted_total: u64,
    refused_total: u64,
    /// The spend-cap action the current gate applies, if any.
    cap_applied: Option<CapAction>,
    /// Where FREE's forced-upgrade refusal sends people.
    upgrade_url: Arc<str>,
    /// Shadow enforcement: the platform's switch, what would have been
    /// refused, and the model of the enforcing gate.
    enforcement: EnforcementSwitch,
    shadow_counts: Arc<ShadowCounts>,
    shadow_model: Arc<ShadowModel>,
}

impl ConnectionActor {
    pub fn new(
        organization: Organization,
        catalog: Arc<TierCatalog>,
        shared: Option<SharedPolicy>,
    ) -> Self {
        let gate = Arc::new(ArcSwap::from_pointee(QueryGate::new(
            organization.id.clone(),
            catalog.get(organization.tier),
            None,
        )));
        let mut actor = Self {
            organization,
            catalog,
            gate,
            shared,
            share: None,
            active_connections: 0,
            admitted_total: 0,
            refused_total: 0,
            cap_applied: None,
            upgrade_url: Arc::from(""),
            enforcement: EnforcementSwitch::default(),
            shadow_counts: Arc::default(),
            shadow_model: Arc::default(),
        };
        actor.replace_gate();
        actor
    }

    /// Follows the platform's enforcement switch (shadow or enforce).
    pub fn with_enforcement(mut self, switch: EnforcementSwitch) -> Self {
        self.enforcement = switch;
        self.replace_gate();
        self
    }

    /// Whether refusals are only counted (the org's mode over the platform's).
    fn in_shadow(&self) -> bool {
        self.organization
            .lifecycle
            .enforcement
            .unwrap_or_else(|| self.enforcement.get())
            == Enforcement::Shadow
    }

    /// In shadow: counts a refusal enforcement would have made; `true`
    /// when the connection is to be admitted anyway.
    fn shadow_admit(&self, reason: &'static str) -> bool {
        if !self.in_shadow() {
            return false;
        }
        self.shadow_counts
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("dynabase_shadow_refusals_total",
            "tier" => self.organization.tier.as_str(), "reason" => reason)
        .increment(1);
        true
    }

    /// Sets the upgrade URL named in forced-upgrade refusals.
    pub fn with_upgrade_url(mut self, url: Arc<str>) -> Self {
        self.upgrade_url = url;
        self
    }

    /// The spend-cap action in force at `now`: the org reached its cap in
    /// the current period.
    fn cap_in_force(&self, now: UnixMillis) -> Option<(CapAction, rust_decimal::Decimal)> {
        let life = &self.organization.lifecycle;
        let cap = life.spend_cap.as_ref()?;
        let reached = life.cap_reached.as_ref()?;
        (reached.period == Period::containing(now)).then_some((cap.action, cap.amount))
    }

    /// FREE's forced upgrade, if in force at `now`.
    fn forced_upgrade(&self, now: UnixMillis) -> Option<ConnectionRefusal> {
        if self.organization.tier != Tier::Free {
            return None;
        }
        let state = self.organization.lifecycle.free_overage.as_ref()?;
        state
            .enforced_at(now)
            .then(|| ConnectionRefusal::ForcedUpgrade {
                org: self.organization.id.to_string(),
                period: state.period.to_string(),
                included: self
                    .limits()
                    .included_vcpu_hours
                    .map_or_else(|| "included".to_owned(), |h| h.normalize().to_string()),
                enforced_from: state.enforce_from.to_rfc3339(),
                upgrade_url: self.upgrade_url.to_string(),
            })
    }

    fn limits(&self) -> &TierLimits {
        self.catalog.get(self.organization.tier)
    }

    /// How many connections this replica may admit: the whole limit, or a
    /// local share of it while the shared state is unreachable.
    fn connection_cap(&self) -> u32 {
        let limit = self.limits().max_connections;
        match &self.shared {
            Some(p) if p.shared.health().degraded => {
                (limit / p.shared.health().replicas.max(1)).max(1)
            }
            _ => limit,
        }
    }

    /// Whether this org's QPS is enforced as a local share (vs centrally).
    fn share_mode(&self) -> Option<(&SharedPolicy, u32)> {
        let policy = self.shared.as_ref()?;
        let qps = self.limits().qps.filter(|&q| q > 0)?;
        (qps >= policy.central_below_qps).then_some((policy, qps))
    }

    /// Builds the gate for the current tier, mode and share.
    fn replace_gate(&mut self) {
        let resharing = self.share.is_some();
        let org = self.organization.id.clone();
        let catalog = self.catalog.clone();
        let limits = catalog.get(self.organization.tier);
        let next = self.organization.tier.next().map(|t| catalog.get(t));
        let cap = self.cap_in_force(UnixMillis::now());
        self.cap_applied = cap.map(|(action, _)| action);
        // Throttled to FREE's rate (locally on each replica), keeping the
        // tier's other limits.
        let throttled;
        let limits = match cap {
            Some((CapAction::Throttle, _)) => {
                let free = catalog.get(Tier::Free);
                throttled = TierLimits {
                    qps: free.qps,
                    burst: free.burst,
                    ..limits.clone()
                };
                &throttled
            }
            _ => limits,
        };
        let gate = match (&self.shared, limits.qps) {
            _ if cap.is_some() => match cap {
                Some((CapAction::Refuse, amount)) => QueryGate::capped(org, limits, amount),
                _ => QueryGate::new(org, limits, next),
            },
            (None, _) | (_, None) | (_, Some(0)) => QueryGate::new(org, limits, next),
            (Some(policy), Some(qps)) => {
                let replicas = f64::from(policy.shared.health().replicas.max(1));
                let fallback = f64::from(qps) / replicas;
                if qps < policy.central_below_qps {
                    QueryGate::central(org, limits, next, policy.shared.clone(), fallback)
                } else {
                    let share = *self.share.get_or_insert(fallback);
                    QueryGate::share(org, limits, next, share, resharing)
                }
            }
        };
        let gate = gate.with_shadow(ShadowHook {
            switch: self.enforcement.clone(),
            org_mode: self.organization.lifecycle.enforcement,
            counts: self.shadow_counts.clone(),
            model: self.shadow_model.clone(),
        });
        // Demand counted on the old gate still belongs to this sync period.
        gate.add_offered(self.gate.load().take_offered());
        self.gate.store(Arc::new(gate));
    }

    /// One exchange with the shared state: refresh leases, report demand,
    /// adopt the new share.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        let Some(policy) = self.shared.clone() else {
            return;
        };
        let demand = self.gate.load().take_offered();
        if self.active_connections == 0 && demand == 0 {
            return;
        }
        let qps = self.share_mode().map(|(_, qps)| qps);
        let org = self.organization.id.clone();
        let request = SyncRequest { qps, demand };
        let shared = policy.shared.clone();
        ctx.spawn(
            async move { shared.sync(&org, request).await }
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(Some(share)) => act.adopt_share(share),
                    Ok(None) => {}
                    Err(e) => {
                        policy.shared.mark_degraded(&e);
                        if let Some((_, qps)) = act.share_mode() {
                            let replicas = policy.shared.health().replicas.max(1);
                            act.adopt_share(f64::from(qps) / f64::from(replicas));
                        }
                    }
                }),
        );
    }

    fn adopt_share(&mut self, share: f64) {
        let changed = match self.share {
            Some(old) if old > 0.0 => ((share - old) / old).abs() > SHARE_HYSTERESIS,
            _ => true,
        };
        if changed && self.share_mode().is_some() {
            self.share = Some(share);
            self.replace_gate();
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(policy) = &self.shared {
            ctx.run_interval(policy.sync_interval, |act, ctx| act.sync(ctx));
        }
    }
}

impl Supervised for ConnectionActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(org = %self.organization.id, "tenant actor restarting");
    }
}

impl Handler<Admit> for ConnectionActor {
    type Result = Result<Admission, ConnectionRefusal>;

    fn handle(&mut self, _: Admit, _: &mut Context<Self>) -> Self::Result {
        let now = UnixMillis::now();
        if let Some(refusal) = self.forced_upgrade(now) {
            if !self.shadow_admit("forced_upgrade") {
                self.refused_total += 1;
                return Err(refusal);
            }
        }
        // A cap reached last period lapses with it.
        if self.cap_in_force(now).map(|(a, _)| a) != self.cap_applied {
            self.replace_gate();
        }
        let limits = self.limits().clone();
        let cap = self.connection_cap();
        let tier = self.organization.tier;
        let next = tier
            .next()
            .map(|next| (next, self.catalog.get(next).max_connections));
        if self.active_connections >= cap && !self.shadow_admit("connection_limit") {
            self.refused_total += 1;
            return Err(ConnectionRefusal::LimitReached {
                org: self.organization.id.to_string(),
                tier,
                active: self.active_connections,
                limit: cap,
                next,
            });
        }
        self.active_connections += 1;
        self.admitted_total += 1;
        Ok(Admission {
            organization: self.organization.clone(),
            limits,
            gate: self.gate.clone(),
            next,
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
        let mode_changed = msg.0.lifecycle.enforcement != self.organization.lifecycle.enforcement;
        self.organization = msg.0;
        let cap_changed = self.cap_in_force(UnixMillis::now()).map(|(a, _)| a) != self.cap_applied;
        if tier_changed || cap_changed || mode_changed {
            // Live sessions pick the new gate up on their next cycle.
            self.share = None;
            self.replace_gate();
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
            shadow_refused_connections: self
                .shadow_counts
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            shadow_refused_query_cycles: self
                .shadow_counts
                .query_cycles
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use actix::Actor;
    use rust_decimal::Decimal;

    use super::*;
    use crate::{
        domain::spend::{CapReached, FreeOverage, SpendCap},
        tenant::query_gate::GateVerdict,
    };

    /// The default catalog's limits: FREE 10 QPS, STARTER 50.
    fn catalog() -> Arc<TierCatalog> {
        let mut tiers = crate::usage_accumulator::tests::catalog()
            .iter()
            .cloned()
            .collect::<Vec<_>>();
        for t in &mut tiers {
            t.qps = Some(match t.tier {
                Tier::Free => 10,
                Tier::Starter => 50,
                _ => 200,
            });
        }
        Arc::new(TierCatalog::new(tiers).unwrap())
    }

    fn capped(action: CapAction) -> Organization {
        let mut org = Organization::for_test("capped", Tier::Starter);
        org.lifecycle.spend_cap = Some(SpendCap {
            amount: Decimal::from(10),
            action,
            set_by: "customer".into(),
        });
        org.lifecycle.cap_reached = Some(CapReached {
            period: Period::containing(UnixMillis::now()),
            at: UnixMillis::now(),
        });
        org
    }

    #[actix::test]
    async fn a_reached_cap_refuses_or_throttles_query_cycles() {
        let actor = ConnectionActor::new(capped(CapAction::Refuse), catalog(), None).start();
        let admission = actor
            .send(Admit)
            .await
            .unwrap()
            .expect("connections still admitted");
        let gate = admission.gate.load();
        let GateVerdict::Wait(wait) = gate.check() else {
            panic!("capped cycles are refused");
        };
        assert_eq!(gate.refusal(wait).spend_cap, Some(Decimal::from(10)));

        let actor = ConnectionActor::new(capped(CapAction::Throttle), catalog(), None).start();
        let admission = actor.send(Admit).await.unwrap().expect("admitted");
        assert_eq!(admission.gate.load().qps(), Some(10), "FREE's rate");

        // Reached in an earlier period: lapsed.
        let mut old = capped(CapAction::Refuse);
        old.lifecycle.cap_reached = Some(CapReached {
            period: Period::parse("2020-01").unwrap(),
            at: UnixMillis(0),
        });
        let actor = ConnectionActor::new(old, catalog(), None).start();
        let admission = actor.send(Admit).await.unwrap().expect("admitted");
        assert_eq!(admission.gate.load().qps(), Some(50));
    }

    #[actix::test]
    async fn a_free_org_past_its_soft_period_is_refused_new_connections() {
        let now = UnixMillis::now();
        let mut org = Organization::for_test("over", Tier::Free);
        org.lifecycle.free_overage = Some(FreeOverage {
            period: Period::containing(now),
            since: now.minus(std::time::Duration::from_secs(8 * 86_400)),
            enforce_from: now.minus(std::time::Duration::from_secs(86_400)),
        });
        let actor = ConnectionActor::new(org.clone(), catalog(), None)
            .with_upgrade_url(Arc::from("https://up.example"))
            .start();
        let Err(ConnectionRefusal::ForcedUpgrade { upgrade_url, .. }) =
            actor.send(Admit).await.unwrap()
        else {
            panic!("forced upgrade expected");
        };
        assert_eq!(upgrade_url, "https://up.example");
        // Upgraded: admitted.
        org.tier = Tier::Starter;
        actor.send(ApplyOrganization(org)).await.unwrap();
        assert!(actor.send(Admit).await.unwrap().is_ok());
    }
}
