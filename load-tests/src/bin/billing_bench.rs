//! Bills N organizations for one closed period against Stripe's stripe-mock,
//! then bills the same period again, and reports items created, duplicates,
//! wall time and store reads per org (`load-tests/billing_bench.sh`).
//!
//! Each org is STARTER with 30 vCPU-hours in one usage record (so each owes
//! 5 h × $0.15 = $0.75) and its own Stripe customer. Stripe is the real
//! async-stripe client against stripe-mock; the items are counted at the
//! port, per org and period, so a duplicate is an org with two creates.
//!
//! It also times one usage-warning check on a busy org (a month of
//! per-minute records, 43,200): the period total read against reading the
//! records, which is what a check did before period totals.
//!
//! Usage: `billing_bench <orgs> [embedded|mongodb]` with `STRIPE_MOCK_URL`
//! (and `MONGODB_URL` for mongodb).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use dynabase::{
    adapters::{
        store::{EmbeddedStore, MongoStore},
        stripe_billing::StripeInvoiceItems,
    },
    settings::Secret,
};
use dynabase_actors::{
    billing::{
        provider::{InvoiceItemRef, InvoiceItemRequest, InvoiceItems, ProviderError},
        runner::{run_period, RunnerDeps},
        BillingConfig,
    },
    domain::{
        jobs::Backoff,
        records::{Period, UsageRecord},
    },
    lifecycle::notifier::Notifier,
    OrgId, Organization, SessionSettings, Store, Tier, TierCatalog, TierLimits, UnixMillis,
    Upstream,
};

/// The real client, with every create counted per org and period.
struct Counted {
    inner: StripeInvoiceItems,
    creates: Mutex<HashMap<String, u32>>,
}

#[async_trait::async_trait]
impl InvoiceItems for Counted {
    async fn find(
        &self,
        customer: &str,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<InvoiceItemRef>, ProviderError> {
        // stripe-mock answers with fixture items that never carry our
        // metadata, so this is a real round trip that finds nothing.
        self.inner.find(customer, org, period).await
    }

    async fn create(&self, r: &InvoiceItemRequest) -> Result<InvoiceItemRef, ProviderError> {
        let item = self.inner.create(r).await?;
        *self
            .creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(format!("{}:{}", r.org, r.period))
            .or_default() += 1;
        Ok(item)
    }
}

fn catalog() -> TierCatalog {
    let tier = |tier, included: Option<&str>, rate: Option<&str>| TierLimits {
        tier,
        max_connections: 10,
        qps: Some(50),
        burst: None,
        base_fee: None,
        included_vcpu_hours: included.map(|s| s.parse().expect("decimal")),
        overage_per_vcpu_hour: rate.map(|s| s.parse().expect("decimal")),
        scale_to_zero: false,
        session: SessionSettings {
            statement_timeout: "0".into(),
            work_mem: "4MB".into(),
            temp_buffers: "8MB".into(),
        },
    };
    TierCatalog::new(vec![
        tier(Tier::Free, Some("5"), None),
        tier(Tier::Starter, Some("25"), Some("0.15")),
        tier(Tier::Pro, Some("200"), Some("0.12")),
        tier(Tier::Enterprise, None, None),
    ])
    .expect("catalog")
}

async fn seed(store: &Arc<dyn Store>, n: usize, period: &Period) {
    let mut batch = Vec::new();
    for i in 0..n {
        let id = OrgId::parse(&format!("bench-{i:05}")).expect("org id");
        let org = Organization {
            id: id.clone(),
            name: id.to_string(),
            tier: Tier::Starter,
            upstream: Upstream::parse("127.0.0.1:5432").expect("upstream"),
            stripe_customer_id: Some(format!("cus_bench{i:05}")),
            stripe_subscription_id: None,
            pending_tier_change: None,
            created_at: period.start(),
            updated_at: period.start(),
            lifecycle: Default::default(),
            compute: Default::default(),
        };
        store.create_org(&org).await.expect("create org");
        batch.push(UsageRecord {
            key: format!("bench:{id}:{period}"),
            org: id,
            database: "app".into(),
            period: period.clone(),
            window_start: period.start(),
            query_cycles: 1000,
            duration_us: 108_000_000_000,
            vcpu_hours: "30".parse().expect("decimal"),
            gb_hours: "0".parse().expect("decimal"),
        });
        if batch.len() == 500 {
            store.record_usage_batch(&batch).await.expect("usage");
            batch.clear();
        }
    }
    store.record_usage_batch(&batch).await.expect("usage");
}

/// A month of per-minute records for one org; then the warning check's
/// read (period total + adjustments) against summing the records.
async fn busy_org_check(store: &Arc<dyn Store>, period: &Period) -> String {
    let org = OrgId::parse("busy-org").expect("org id");
    let minutes = 43_200;
    let mut batch = Vec::with_capacity(1000);
    for m in 0..minutes {
        batch.push(UsageRecord {
            key: format!("busy:{m}"),
            org: org.clone(),
            database: "app".into(),
            period: period.clone(),
            window_start: UnixMillis(period.start().0 + m * 60_000),
            query_cycles: 100,
            duration_us: 1_000_000,
            vcpu_hours: "0.000277".parse().expect("decimal"),
            gb_hours: "0".parse().expect("decimal"),
        });
        if batch.len() == 1000 {
            store.record_usage_batch(&batch).await.expect("usage");
            batch.clear();
        }
    }
    store.record_usage_batch(&batch).await.expect("usage");
    let t = Instant::now();
    let total = store
        .billable_vcpu_hours(&org, period)
        .await
        .expect("total");
    let with_total = t.elapsed();
    let t = Instant::now();
    let records = store.usage_for_period(&org, period).await.expect("records");
    let summed: rust_decimal::Decimal = records.iter().map(|r| r.vcpu_hours).sum();
    let with_records = t.elapsed();
    assert_eq!(total, summed, "the period total equals the records' sum");
    format!(
        "usage-warning check on one org with {minutes} records: period total {:.2} ms \
         (1 total + its adjustments), reading the records {:.0} ms; both {total} vCPU-hours",
        with_total.as_secs_f64() * 1000.0,
        with_records.as_secs_f64() * 1000.0
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let kind = args.next().unwrap_or_else(|| "embedded".into());
    let stripe = std::env::var("STRIPE_MOCK_URL").expect("STRIPE_MOCK_URL");
    let dir = std::env::temp_dir().join(format!("billing-bench-{}", std::process::id()));
    let store: Arc<dyn Store> = match kind.as_str() {
        "mongodb" => {
            let url = std::env::var("MONGODB_URL").expect("MONGODB_URL");
            let db = format!("billing_bench_{}", std::process::id());
            Arc::new(MongoStore::connect(&url, &db).await.expect("mongodb"))
        }
        _ => Arc::new(EmbeddedStore::open(&dir).expect("embedded store")),
    };
    let period = Period::parse("2026-10").expect("period");
    let t = Instant::now();
    seed(&store, n, &period).await;
    let seeded = t.elapsed();
    let provider = Arc::new(Counted {
        inner: StripeInvoiceItems::new(Secret::new("sk_test_BillingBench"), Some(&stripe))
            .expect("stripe client"),
        creates: Mutex::default(),
    });
    let config = BillingConfig::default();
    let deps = Arc::new(RunnerDeps {
        store: store.clone(),
        catalog: Arc::new(catalog()),
        provider: provider.clone(),
        notifier: Notifier::new(
            store.clone(),
            Backoff {
                base: std::time::Duration::from_secs(1),
                max: std::time::Duration::from_secs(60),
            },
            5,
        ),
        config: config.clone(),
    });
    let now = period
        .end()
        .plus(config.settle_delay)
        .plus(std::time::Duration::from_secs(1));
    let mut rows = Vec::new();
    for run in 1..=2 {
        let t = Instant::now();
        let report = run_period(deps.clone(), period.clone(), now)
            .await
            .expect("run");
        let wall = t.elapsed();
        let creates: u32 = provider
            .creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        // Plan: 4 reads; records: 1; pushes: one due-list read per 256.
        let reads = report.plan_store_reads as usize + 1 + report.created.div_ceil(256) + 1;
        rows.push(format!(
            "| {run} | {} | {} | {} | {} | {creates} | {:.1} s | {:.0} | {reads} ({:.4}/org) |",
            report.orgs,
            report.recorded,
            report.created,
            report.amount_pushed,
            wall.as_secs_f64(),
            report.orgs as f64 / wall.as_secs_f64(),
            reads as f64 / report.orgs.max(1) as f64,
        ));
    }
    let duplicates = provider
        .creates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|&&c| c > 1)
        .count();
    println!(
        "store: {kind}; orgs: {n}; seeding (orgs + usage): {:.1} s",
        seeded.as_secs_f64()
    );
    println!();
    println!("| run | orgs | records written | items created | amount pushed | creates at Stripe so far | wall | orgs/s | store reads |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!("duplicates (orgs with more than one create): **{duplicates}**");
    println!();
    println!("{}", busy_org_check(&store, &period).await);
    if kind != "mongodb" {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if duplicates > 0 {
        std::process::exit(1);
    }
}
