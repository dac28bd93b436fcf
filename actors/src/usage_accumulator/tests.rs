//! Tests of the accumulator's rules (the book, with time passed in) and of
//! the actor against an in-memory store that injects failures.

use std::{str::FromStr, sync::Arc, time::Duration};

use actix::{Actor, Addr};
use rust_decimal::Decimal;

use super::*;
use crate::{
    domain::{
        catalog::{SessionSettings, TierLimits, UsageFactor, UsageFactors},
        cycle::{SessionLabels, StatementKind},
        org_id::OrgId,
        organization::Organization,
        records::{Period, UsageRecord},
        tier::Tier,
    },
    memory_store::MemoryStore,
};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn factors() -> UsageFactors {
    let f = |c: &str| UsageFactor {
        complexity: dec(c),
        parallelism: Decimal::ONE,
    };
    UsageFactors {
        select: f("1"),
        insert: f("1.2"),
        update: f("1.5"),
        delete: f("1.3"),
        ddl: f("2"),
        other: f("1"),
    }
}

/// A catalog whose FREE tier includes 0.001 vCPU-hours (3.6 s), so tests can
/// cross the warning thresholds.
pub(crate) fn catalog() -> Arc<TierCatalog> {
    let tiers = Tier::ALL
        .into_iter()
        .map(|tier| TierLimits {
            tier,
            max_connections: 5,
            qps: None,
            burst: None,
            base_fee: Some(Decimal::ZERO),
            included_vcpu_hours: (tier != Tier::Enterprise).then(|| dec("0.001")),
            overage_per_vcpu_hour: None,
            scale_to_zero: false,
            session: SessionSettings {
                statement_timeout: "0".into(),
                work_mem: "4MB".into(),
                temp_buffers: "8MB".into(),
            },
        })
        .collect();
    Arc::new(TierCatalog::new(tiers).unwrap())
}

fn book_config(replica: &str) -> BookConfig {
    BookConfig {
        replica: replica.into(),
        boot: "b0".into(),
        factors: factors(),
        max_pending: 1000,
        max_batch: 100,
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(80),
    }
}

fn anchor() -> ClockAnchor {
    // 2026-11-01T00:00:30Z: thirty seconds into a minute window.
    ClockAnchor {
        instant: Instant::now(),
        unix: UnixMillis(1_793_491_230_000),
    }
}

fn config(replica: &str, anchor: ClockAnchor) -> UsageConfig {
    UsageConfig {
        flush_interval: Duration::from_millis(20),
        warning_check_interval: Duration::ZERO,
        book: book_config(replica),
        anchor,
    }
}

pub(crate) fn accumulator() -> (UsageAccumulator, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::default());
    let acc = UsageAccumulator::new(store.clone(), catalog(), config("r1", anchor()));
    (acc, store)
}

fn labels(org: &str, db: &str) -> Arc<SessionLabels> {
    Arc::new(SessionLabels {
        org: OrgId::parse(org).unwrap(),
        database: db.into(),
        work_mem_mb: 4,
    })
}

fn event(
    anchor: &ClockAnchor,
    l: &Arc<SessionLabels>,
    kind: StatementKind,
    at_ms: u64,
    ms: u64,
) -> CycleEvent {
    CycleEvent {
        session: l.clone(),
        kind,
        started: anchor.instant + Duration::from_millis(at_ms),
        duration: Duration::from_millis(ms),
    }
}

fn sum(records: &[UsageRecord]) -> (u64, u64, Decimal) {
    records.iter().fold((0, 0, Decimal::ZERO), |(c, d, v), r| {
        (c + r.query_cycles, d + r.duration_us, v + r.vcpu_hours)
    })
}

#[test]
fn events_become_one_keyed_record_per_org_database_and_minute() {
    let a = anchor();
    let mut book = UsageBook::new(book_config("r1"), a);
    let (acme_app, acme_jobs, other) = (
        labels("acme", "app"),
        labels("acme", "jobs"),
        labels("other", "app"),
    );
    // 20 × 200 ms selects in the first window, one 100 ms insert in the next.
    for i in 0..20 {
        book.record(&event(&a, &acme_app, StatementKind::Select, i * 10, 200));
    }
    book.record(&event(&a, &acme_app, StatementKind::Insert, 31_000, 100));
    book.record(&event(&a, &acme_jobs, StatementKind::Select, 0, 50));
    book.record(&event(&a, &other, StatementKind::Ddl, 0, 10));
    assert_eq!(book.open_buckets(), 4);
    assert_eq!(book.cut(false).unwrap(), 4);
    let mut records = book.next_batch(Instant::now()).unwrap();
    records.sort_by(|x, y| x.key.cmp(&y.key));
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "r1:acme:app:1793491200000:b0-1",
            "r1:acme:app:1793491260000:b0-1",
            "r1:acme:jobs:1793491200000:b0-1",
            "r1:other:app:1793491200000:b0-1",
        ]
    );
    let first = &records[0];
    assert_eq!((first.query_cycles, first.duration_us), (20, 4_000_000));
    // 4 s of SELECT: 4 / 3600 vCPU-hours; 4 MB × 4 s = 4/1024/3600 GB-hours.
    assert_eq!(first.vcpu_hours, dec("4") / dec("3600"));
    assert_eq!(first.gb_hours, dec("16") / dec("1024") / dec("3600"));
    assert_eq!(first.period, Period::parse("2026-11").unwrap());
    assert_eq!(records[1].vcpu_hours, dec("0.12") / dec("3600"));
    assert_eq!(records[3].vcpu_hours, dec("0.02") / dec("3600"));
    // The next flush uses the next sequence number.
    book.batch_written(&[Write::Applied; 4]);
    book.record(&event(&a, &acme_app, StatementKind::Select, 0, 1));
    book.cut(false).unwrap();
    let next = book.next_batch(Instant::now()).unwrap();
    assert_eq!(next[0].key, "r1:acme:app:1793491200000:b0-2");
    assert!(!book.is_drained());
}

#[test]
fn a_full_buffer_keeps_usage_aggregating_and_failures_back_off() {
    let a = anchor();
    let mut config = book_config("r1");
    config.max_pending = 1;
    let mut book = UsageBook::new(config, a);
    let (x, y) = (labels("x", "db"), labels("y", "db"));
    book.record(&event(&a, &x, StatementKind::Select, 0, 5));
    book.record(&event(&a, &y, StatementKind::Select, 0, 5));
    assert_eq!(book.cut(false).unwrap(), 1, "room for one record");
    assert_eq!(book.open_buckets(), 1);
    // More usage for the bucket left open folds into it.
    book.record(&event(&a, &y, StatementKind::Select, 1, 5));
    book.record(&event(&a, &x, StatementKind::Select, 2, 5));
    assert_eq!(book.cut(false).unwrap(), 0, "buffer full");
    assert_eq!(book.open_buckets(), 2);

    let t0 = Instant::now();
    let batch = book.next_batch(t0).unwrap();
    assert_eq!(book.batch_failed(t0), Duration::from_millis(10));
    assert!(book.next_batch(t0).is_none(), "backing off");
    let again = book.next_batch(t0 + Duration::from_millis(10)).unwrap();
    assert_eq!(again, batch, "same records, same keys");
    assert_eq!(book.batch_failed(t0), Duration::from_millis(20));
    book.next_batch(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(book.batch_failed(t0), Duration::from_millis(40));
    book.next_batch(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(book.batch_failed(t0), Duration::from_millis(80));
    book.next_batch(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(book.batch_failed(t0), Duration::from_millis(80), "capped");
    book.start_draining();
    book.next_batch(t0).unwrap();
    assert_eq!(book.batch_failed(t0), Duration::from_millis(10), "shutdown");

    // At shutdown everything is cut, whatever the bound.
    assert_eq!(book.cut(true).unwrap(), 2);
    assert_eq!(book.pending_records(), 3);
}

async fn org(store: &MemoryStore, id: &str, tier: Tier) {
    store
        .create_org(&Organization::for_test(id, tier))
        .await
        .unwrap();
}

fn start(store: Arc<MemoryStore>, replica: &str, a: ClockAnchor) -> Addr<UsageAccumulator> {
    UsageAccumulator::new(store, catalog(), config(replica, a)).start()
}

async fn flush(addr: &Addr<UsageAccumulator>) -> FlushReport {
    addr.send(Flush {
        deadline: Instant::now() + Duration::from_secs(5),
    })
    .await
    .unwrap()
}

#[actix::test]
async fn lost_acknowledgements_and_failed_writes_are_retried_without_double_counting() {
    let store = Arc::new(MemoryStore::default());
    let a = anchor();
    let addr = start(store.clone(), "r1", a);
    let l = labels("acme", "app");
    store.lose_usage_acks(2);
    store.fail_usage_writes(0);
    addr.send(CycleBatch(
        (0..100)
            .map(|i| event(&a, &l, StatementKind::Select, i, 10))
            .collect(),
    ))
    .await
    .unwrap();
    // Flushes run every 20 ms; the first two writes apply but look failed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.fail_usage_writes(3);
    addr.send(CycleBatch(
        (0..50)
            .map(|i| event(&a, &l, StatementKind::Update, i, 10))
            .collect(),
    ))
    .await
    .unwrap();
    let report = flush(&addr).await;
    assert!(report.complete, "{report:?}");
    assert!(report.records_already_applied >= 1, "{report:?}");
    assert!(report.failed_writes >= 5, "{report:?}");
    let (cycles, duration_us, vcpu) = sum(&store.all_usage());
    assert_eq!((cycles, duration_us), (150, 1_500_000));
    assert_eq!(vcpu, (dec("1") + dec("0.5") * dec("1.5")) / dec("3600"));
}

#[actix::test]
async fn warnings_fire_once_per_threshold_across_replicas() {
    let store = Arc::new(MemoryStore::default());
    org(&store, "small", Tier::Free).await;
    let a = anchor();
    let replicas = [start(store.clone(), "r1", a), start(store.clone(), "r2", a)];
    let l = labels("small", "app");
    // Included: 3.6 s. 3 s crosses 80%, 4 s crosses 100%; both replicas
    // write usage and check after each write.
    for (i, ms) in [1_500u64, 1_500, 500, 500, 500, 500]
        .into_iter()
        .enumerate()
    {
        let replica = &replicas[i % 2];
        replica
            .send(CycleBatch(vec![event(
                &a,
                &l,
                StatementKind::Select,
                0,
                ms,
            )]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for r in &replicas {
        flush(r).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let notes = store
        .notifications_for_org(&OrgId::parse("small").unwrap())
        .await
        .unwrap();
    let keys: Vec<&str> = notes.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(keys, ["usage:small:2026-11:80", "usage:small:2026-11:100"]);
}

#[test]
fn unwritten_records_are_taken_and_restored_under_their_keys() {
    let a = anchor();
    let mut book = UsageBook::new(book_config("r1"), a);
    let (x, y) = (labels("x", "db"), labels("y", "db"));
    book.record(&event(&a, &x, StatementKind::Select, 0, 5));
    book.record(&event(&a, &y, StatementKind::Select, 0, 5));
    book.cut(false).unwrap();
    let in_flight = book.next_batch(Instant::now()).unwrap();
    book.record(&event(&a, &x, StatementKind::Insert, 0, 7));
    let taken = book.take_unwritten().unwrap();
    assert_eq!(taken.len(), 3);
    assert_eq!(&taken[..2], &in_flight[..], "in flight first, keys kept");
    assert!(book.is_drained());

    let mut next_process = UsageBook::new(book_config("r1"), a);
    next_process.restore(taken.clone());
    assert_eq!(next_process.restored_outstanding(), 3);
    assert_eq!(next_process.next_batch(Instant::now()).unwrap(), taken);
    next_process.batch_written(&[Write::Applied, Write::AlreadyApplied, Write::Applied]);
    assert_eq!(next_process.restored_outstanding(), 0);
}
