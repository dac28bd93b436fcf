//! A billing event whose effect fails is kept and retried until applied —
//! by the scheduler's ticks, with the time passed in, and by another
//! instance of the actors over the same store (a restart, or another
//! replica). The store fails on purpose: a wrapper around the embedded
//! store refuses the first organization writes.

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

use async_trait::async_trait;
use dynabase::adapters::store::EmbeddedStore;
use dynabase_actors::{
    domain::{
        billing::{
            BillingEvent, BillingEventKind, PriceMap, PriceRef, SubscriptionChange,
            SubscriptionOrder,
        },
        billing_record::{BillingRecord, BillingState},
        jobs::{Job, JobKind, JobStatus},
        organization::LifecycleState,
        period_total::PeriodTotal,
        records::{
            CalibrationRecord, Notification, Period, ProcessedEvent, TierChange, UsageAdjustment,
            UsageRecord, Write,
        },
    },
    lifecycle::Tick,
    supervisor::{PlatformActors, PlatformDeps},
    webhook_handler::{job_id, Accept, Acceptance},
    OrgId, Organization, Store, StoreError, Tier, TierCatalog, UnixMillis, Upstream,
};

/// The embedded store, except that the first `failures` organization
/// writes fail as if the server were unreachable.
struct FlakyStore {
    inner: EmbeddedStore,
    failures: AtomicU32,
}

#[async_trait]
impl Store for FlakyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn create_org(&self, org: &Organization) -> Result<(), StoreError> {
        self.inner.create_org(org).await
    }
    async fn get_org(&self, id: &OrgId) -> Result<Option<Organization>, StoreError> {
        self.inner.get_org(id).await
    }
    async fn list_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        self.inner.list_orgs().await
    }
    async fn update_org(&self, org: &Organization) -> Result<(), StoreError> {
        self.inner.update_org(org).await
    }
    async fn record_usage(&self, r: &UsageRecord) -> Result<Write, StoreError> {
        self.inner.record_usage(r).await
    }
    async fn add_usage_adjustment(&self, a: &UsageAdjustment) -> Result<Write, StoreError> {
        self.inner.add_usage_adjustment(a).await
    }
    async fn usage_adjustments(
        &self,
        org: &OrgId,
        p: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        self.inner.usage_adjustments(org, p).await
    }
    async fn set_api_token_hash(&self, org: &OrgId, hash: &str) -> Result<(), StoreError> {
        self.inner.set_api_token_hash(org, hash).await
    }
    async fn api_token_hash(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        self.inner.api_token_hash(org).await
    }
    async fn usage_for_period(
        &self,
        org: &OrgId,
        p: &Period,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.inner.usage_for_period(org, p).await
    }
    async fn mark_event_processed(&self, e: &ProcessedEvent) -> Result<Write, StoreError> {
        self.inner.mark_event_processed(e).await
    }
    async fn period_total(&self, org: &OrgId, p: &Period) -> Result<PeriodTotal, StoreError> {
        self.inner.period_total(org, p).await
    }
    async fn period_totals(&self, p: &Period) -> Result<Vec<PeriodTotal>, StoreError> {
        self.inner.period_totals(p).await
    }
    async fn set_period_total(&self, t: &PeriodTotal) -> Result<(), StoreError> {
        self.inner.set_period_total(t).await
    }
    async fn adjustments_for_period(&self, p: &Period) -> Result<Vec<UsageAdjustment>, StoreError> {
        self.inner.adjustments_for_period(p).await
    }
    async fn insert_billing_record(&self, r: &BillingRecord) -> Result<Write, StoreError> {
        self.inner.insert_billing_record(r).await
    }
    async fn billing_record(
        &self,
        org: &OrgId,
        p: &Period,
    ) -> Result<Option<BillingRecord>, StoreError> {
        self.inner.billing_record(org, p).await
    }
    async fn billing_records_for_org(&self, org: &OrgId) -> Result<Vec<BillingRecord>, StoreError> {
        self.inner.billing_records_for_org(org).await
    }
    async fn billing_records_for_period(
        &self,
        p: &Period,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        self.inner.billing_records_for_period(p).await
    }
    async fn due_billing_records(
        &self,
        state: BillingState,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        self.inner.due_billing_records(state, now, limit).await
    }
    async fn billing_record_by_item(&self, id: &str) -> Result<Option<BillingRecord>, StoreError> {
        self.inner.billing_record_by_item(id).await
    }
    async fn update_billing_record_if_unchanged(
        &self,
        r: &BillingRecord,
        seen: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.inner.update_billing_record_if_unchanged(r, seen).await
    }
    async fn claim(
        &self,
        name: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<dynabase_actors::store::Claim, StoreError> {
        self.inner.claim(name, now, until).await
    }
    async fn tier_changes_since(&self, since: UnixMillis) -> Result<Vec<TierChange>, StoreError> {
        self.inner.tier_changes_since(since).await
    }
    async fn record_calibration(&self, r: &CalibrationRecord) -> Result<Write, StoreError> {
        self.inner.record_calibration(r).await
    }
    async fn replace_calibration(&self, r: &CalibrationRecord) -> Result<(), StoreError> {
        self.inner.replace_calibration(r).await
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(key).await
    }
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_setting(key, value).await
    }
    async fn calibrations(&self) -> Result<Vec<CalibrationRecord>, StoreError> {
        self.inner.calibrations().await
    }
    async fn add_notification(&self, n: &Notification) -> Result<Write, StoreError> {
        self.inner.add_notification(n).await
    }
    async fn notifications_for_org(&self, org: &OrgId) -> Result<Vec<Notification>, StoreError> {
        self.inner.notifications_for_org(org).await
    }
    async fn append_tier_change(&self, c: &TierChange) -> Result<(), StoreError> {
        self.inner.append_tier_change(c).await
    }
    async fn tier_history(&self, org: &OrgId) -> Result<Vec<TierChange>, StoreError> {
        self.inner.tier_history(org).await
    }
    async fn update_org_if_unchanged(
        &self,
        org: &Organization,
        seen: UnixMillis,
    ) -> Result<bool, StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Unavailable(
                "injected: server unreachable".into(),
            ));
        }
        self.inner.update_org_if_unchanged(org, seen).await
    }
    async fn org_by_stripe_customer(&self, c: &str) -> Result<Option<Organization>, StoreError> {
        self.inner.org_by_stripe_customer(c).await
    }
    async fn record_subscription_event(
        &self,
        s: &str,
        created: i64,
        e: &str,
    ) -> Result<SubscriptionOrder, StoreError> {
        self.inner.record_subscription_event(s, created, e).await
    }
    async fn enqueue_job(&self, job: &Job) -> Result<Write, StoreError> {
        self.inner.enqueue_job(job).await
    }
    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn claim_due_jobs(
        &self,
        kind: JobKind,
        now: UnixMillis,
        until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.claim_due_jobs(kind, now, until, limit).await
    }
    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        self.inner.update_job(job).await
    }
}

fn usage_config() -> dynabase_actors::usage_accumulator::UsageConfig {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = dynabase::settings::LoadOptions {
        config_dir: dir.path().to_path_buf(),
        env: Default::default(),
    };
    let settings = dynabase::settings::load(&options).expect("built-in configuration");
    dynabase::usage_feed::usage_config(&settings, dynabase_actors::ClockAnchor::now())
        .expect("usage configuration")
}

fn catalog() -> Arc<TierCatalog> {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = dynabase::settings::LoadOptions {
        config_dir: dir.path().to_path_buf(),
        env: Default::default(),
    };
    Arc::new(
        dynabase::settings::load(&options)
            .expect("built-in configuration")
            .catalog,
    )
}

fn upgrade(created: i64) -> BillingEvent {
    BillingEvent {
        id: "evt_1QsRtry8xK2mLq4ZrPpPpPp".into(),
        event_type: "customer.subscription.updated".into(),
        created,
        kind: BillingEventKind::Subscription {
            change: SubscriptionChange::Updated,
            subscription_id: "sub_retry".into(),
            customer_id: "cus_Retry".into(),
            status: "active".into(),
            prices: vec![PriceRef {
                id: "price_pro".into(),
                lookup_key: None,
            }],
            org_hint: None,
        },
    }
}

async fn job(store: &FlakyStore) -> Job {
    store
        .get_job(&job_id("evt_1QsRtry8xK2mLq4ZrPpPpPp"))
        .await
        .expect("read job")
        .expect("the event was recorded")
}

async fn wait_for_attempts(store: &FlakyStore, attempts: u32) -> Job {
    for _ in 0..200 {
        let j = job(store).await;
        if j.attempts >= attempts && (j.status != JobStatus::Pending || j.note.is_some()) {
            return j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("attempt {attempts} never finished: {:?}", job(store).await);
}

#[actix::test]
async fn a_failed_effect_is_kept_and_retried_until_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FlakyStore {
        inner: EmbeddedStore::open(dir.path()).expect("open store"),
        failures: AtomicU32::new(2),
    });
    let acme = OrgId::parse("acme").unwrap();
    store
        .create_org(&Organization {
            id: acme.clone(),
            name: "Acme".into(),
            tier: Tier::Free,
            upstream: Upstream::parse("127.0.0.1:5432").unwrap(),
            stripe_customer_id: Some("cus_Retry".into()),
            stripe_subscription_id: None,
            pending_tier_change: None,
            created_at: UnixMillis(1),
            updated_at: UnixMillis(1),
            lifecycle: LifecycleState::default(),
            compute: Default::default(),
        })
        .await
        .expect("create org");
    let start = |store: Arc<FlakyStore>| {
        PlatformActors::start_with(PlatformDeps {
            prices: PriceMap::new([("price_pro".to_owned(), Tier::Pro)]),
            ..PlatformDeps::new(store, catalog(), usage_config())
        })
    };
    let actors = start(store.clone());
    let t = UnixMillis::now();

    let accepted = actors
        .webhooks
        .send(Accept {
            event: upgrade(t.0 / 1000),
            now: t,
        })
        .await
        .expect("handler alive")
        .expect("recorded");
    assert_eq!(accepted, Acceptance::Queued);
    // The first attempt fails: the event is kept, pending, with the error.
    let first = wait_for_attempts(&store, 1).await;
    assert_eq!(first.status, JobStatus::Pending);
    assert!(
        first.note.as_deref().unwrap_or("").contains("injected"),
        "{first:?}"
    );
    assert_eq!(
        first.next_attempt_at,
        t.plus(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        store.get_org(&acme).await.unwrap().unwrap().tier,
        Tier::Free
    );

    // Not due yet: nothing runs.
    let report = actors
        .lifecycle
        .send(Tick {
            now: t.plus(std::time::Duration::from_millis(900)),
        })
        .await
        .unwrap();
    assert_eq!((report.events.applied, report.events.retrying), (0, 0));
    // Due: the second attempt fails too and backs off further.
    let at = t.plus(std::time::Duration::from_secs(1));
    let report = actors.lifecycle.send(Tick { now: at }).await.unwrap();
    assert_eq!(report.events.retrying, 1, "{report:?}");
    let second = job(&store).await;
    assert_eq!(
        (second.attempts, second.next_attempt_at),
        (2, at.plus(std::time::Duration::from_secs(2)))
    );

    // Another instance over the same store (a restart, or another replica)
    // picks it up when due and applies it.
    let other = start(store.clone());
    let report = other
        .lifecycle
        .send(Tick {
            now: t.plus(std::time::Duration::from_secs(10)),
        })
        .await
        .unwrap();
    assert_eq!(report.events.applied, 1, "{report:?}");
    let done = job(&store).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Done, 3));
    assert_eq!(store.get_org(&acme).await.unwrap().unwrap().tier, Tier::Pro);
    assert_eq!(store.tier_history(&acme).await.unwrap().len(), 1);

    // Delivered again afterwards: recognised, nothing changes.
    let again = actors
        .webhooks
        .send(Accept {
            event: upgrade(t.0 / 1000),
            now: UnixMillis::now(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, Acceptance::Duplicate);
    assert_eq!(store.tier_history(&acme).await.unwrap().len(), 1);
}
