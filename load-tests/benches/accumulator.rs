//! Usage accumulator throughput, in process: events per second.
//!
//! - `book/record`: the accumulator's rules alone ([`UsageBook::record`]),
//!   4096 events per iteration over 200 org × database pairs, with a flush
//!   (cut + acknowledged write) every iteration, as the actor does every
//!   flush interval.
//! - `actor/cycle_batch`: the same events sent to a running
//!   `UsageAccumulator` actor as one `CycleBatch` message and awaited — the
//!   path the proxy's forwarder takes. The events are made per iteration
//!   (an `Arc` clone each), as the proxy makes them.
//!
//! Run: `cargo bench -p dynabase-load-tests --bench accumulator`.
//! The target (issue 6) is ≥ 1,000,000 events/s.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{Actor, System};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dynabase_actors::{
    domain::{
        catalog::{SessionSettings, TierLimits, UsageFactor, UsageFactors},
        cycle::{CycleEvent, SessionLabels, StatementKind},
        records::Write,
    },
    memory_store::MemoryStore,
    usage_accumulator::{BookConfig, CycleBatch, Status, UsageAccumulator, UsageBook, UsageConfig},
    ClockAnchor, OrgId, Tier, TierCatalog,
};
use rust_decimal::Decimal;

const EVENTS: usize = 4096;

fn factors() -> UsageFactors {
    let f = |c: i64| UsageFactor {
        complexity: Decimal::new(c, 1),
        parallelism: Decimal::ONE,
    };
    UsageFactors {
        select: f(10),
        insert: f(12),
        update: f(15),
        delete: f(13),
        ddl: f(20),
        other: f(10),
    }
}

fn book_config() -> BookConfig {
    BookConfig {
        replica: "bench".into(),
        boot: "b".into(),
        factors: factors(),
        max_pending: 100_000,
        max_batch: 500,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(10),
    }
}

fn catalog() -> Arc<TierCatalog> {
    let tiers = Tier::ALL
        .into_iter()
        .map(|tier| TierLimits {
            tier,
            max_connections: 50,
            qps: None,
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
        })
        .collect();
    Arc::new(TierCatalog::new(tiers).expect("all tiers"))
}

/// 4096 events over 100 orgs × 2 databases, mixed kinds and durations.
fn events(anchor: &ClockAnchor) -> Vec<CycleEvent> {
    let sessions: Vec<Arc<SessionLabels>> = (0..200)
        .map(|i| {
            Arc::new(SessionLabels {
                org: OrgId::parse(&format!("org-{}", i / 2)).expect("org id"),
                database: format!("db{}", i % 2),
                work_mem_mb: 16,
            })
        })
        .collect();
    (0..EVENTS)
        .map(|i| CycleEvent {
            session: sessions[i % sessions.len()].clone(),
            kind: StatementKind::ALL[i % StatementKind::ALL.len()],
            started: anchor.instant + Duration::from_micros(i as u64 * 10),
            duration: Duration::from_micros(200 + (i as u64 % 1000)),
        })
        .collect()
}

fn book(c: &mut Criterion) {
    let anchor = ClockAnchor::now();
    let events = events(&anchor);
    let mut group = c.benchmark_group("book");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("record", |b| {
        let mut book = UsageBook::new(book_config(), anchor);
        b.iter(|| {
            for e in &events {
                book.record(e);
            }
            book.cut(false).expect("cut");
            while let Some(batch) = book.next_batch(Instant::now()) {
                book.batch_written(&vec![Write::Applied; batch.len()]);
            }
        })
    });
    group.finish();
}

fn actor(c: &mut Criterion) {
    let anchor = ClockAnchor::now();
    let events = events(&anchor);
    let system = System::new();
    let addr = system.block_on(async move {
        UsageAccumulator::new(
            Arc::new(MemoryStore::default()),
            catalog(),
            UsageConfig {
                flush_interval: Duration::from_millis(100),
                warning_check_interval: Duration::from_secs(30),
                book: book_config(),
                anchor,
            },
        )
        .start()
    });
    let mut group = c.benchmark_group("actor");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("cycle_batch", |b| {
        b.iter_batched(
            || events.clone(),
            |batch| {
                system.block_on(async {
                    addr.send(CycleBatch(batch)).await.expect("delivered");
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let status = system.block_on(async { addr.send(Status).await.expect("status") });
    eprintln!("accumulator after the run: {status:?}");
}

criterion_group!(benches, book, actor);
criterion_main!(benches);
