//! The per-cycle rate-limit decision, three ways:
//! - `gate.check()` on a gate the session already holds (what the proxy does);
//! - the same through the `ArcSwap` handle the tenant actor swaps on tier changes;
//! - a message round trip to an actor that owns the limiter (the alternative
//!   the design weighed: every query asks the tenant actor).

use std::{sync::Arc, time::Duration};

use actix::{Actor, Context, Handler, Message};
use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use dynabase_actors::{
    tenant::{GateVerdict, QueryGate},
    OrgId, SessionSettings, Tier, TierLimits,
};

fn limits(qps: Option<u32>) -> TierLimits {
    TierLimits {
        tier: Tier::Pro,
        max_connections: 50,
        qps,
        burst: None,
        base_fee: None,
        included_vcpu_hours: None,
        overage_per_vcpu_hour: None,
        scale_to_zero: false,
        session: SessionSettings {
            statement_timeout: "0".into(),
            work_mem: "4MB".into(),
            temp_buffers: "8MB".into(),
        },
    }
}

fn gate(qps: Option<u32>) -> QueryGate {
    QueryGate::new(OrgId::parse("bench").unwrap(), &limits(qps), None)
}

struct GateOwner(QueryGate);

impl Actor for GateOwner {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "bool")]
struct Check;

impl Handler<Check> for GateOwner {
    type Result = bool;
    fn handle(&mut self, _: Check, _: &mut Context<Self>) -> bool {
        self.0.check() == GateVerdict::Go
    }
}

fn decision(c: &mut Criterion) {
    // A limit far above what the benchmark reaches: every check admits.
    let limited = gate(Some(1_000_000_000));
    c.bench_function("gate.check (limited tier)", |b| b.iter(|| limited.check()));

    let unlimited = gate(None);
    c.bench_function("gate.check (unlimited tier)", |b| {
        b.iter(|| unlimited.check())
    });

    let shared = Arc::new(ArcSwap::from_pointee(gate(Some(1_000_000_000))));
    c.bench_function("handle.load().check() (as sessions do)", |b| {
        b.iter(|| shared.load().check())
    });

    let system = actix::System::new();
    let owner = system.block_on(async { GateOwner(gate(Some(1_000_000_000))).start() });
    c.bench_function("actor round trip per check", |b| {
        b.iter(|| system.block_on(owner.send(Check)).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = decision
}
criterion_main!(benches);
