//! `MemoryStore`: a [`Store`] in process memory, for actor tests and
//! benchmarks (the binary never uses it: it has the embedded store for that).
//!
//! It keeps the port's promises (keyed writes apply once, lists in the
//! documented order) and can inject the failures the usage accumulator must
//! survive: writes that fail, and writes that apply but whose
//! acknowledgement is lost.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;

use crate::{
    domain::{
        billing::SubscriptionOrder,
        billing_record::{BillingRecord, BillingState},
        jobs::{Job, JobKind, JobStatus},
        org_id::OrgId,
        organization::Organization,
        period_total::{record_units, PeriodTotal},
        records::{
            CalibrationRecord, Notification, Period, ProcessedEvent, TierChange, UsageAdjustment,
            UsageRecord, Write,
        },
        time::UnixMillis,
    },
    store::{Claim, Store, StoreError},
};

#[derive(Debug, Default)]
struct Data {
    orgs: BTreeMap<OrgId, Organization>,
    usage: BTreeMap<String, UsageRecord>,
    adjustments: Vec<UsageAdjustment>,
    tokens: BTreeMap<OrgId, String>,
    events: BTreeMap<String, ProcessedEvent>,
    totals: BTreeMap<(OrgId, Period), PeriodTotal>,
    billing: BTreeMap<String, BillingRecord>,
    claims: BTreeMap<String, UnixMillis>,
    settings: BTreeMap<String, String>,
    calibrations: BTreeMap<Period, CalibrationRecord>,
    notifications: Vec<Notification>,
    tier_changes: Vec<TierChange>,
    /// Subscription id → (created, event id) of the newest event recorded.
    subscription_events: BTreeMap<String, (i64, String)>,
    jobs: BTreeMap<String, Job>,
    /// Usage writes to refuse outright.
    fail_usage_writes: u32,
    /// Usage writes to apply and then report as failed.
    lose_usage_acks: u32,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

fn keyed<T>(exists: bool, insert: impl FnOnce() -> T) -> Write {
    if exists {
        Write::AlreadyApplied
    } else {
        insert();
        Write::Applied
    }
}

impl MemoryStore {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` usage writes fail without applying anything.
    pub fn fail_usage_writes(&self, n: u32) {
        self.data().fail_usage_writes = n;
    }

    /// The next `n` usage writes apply, then report failure (a lost
    /// acknowledgement).
    pub fn lose_usage_acks(&self, n: u32) {
        self.data().lose_usage_acks = n;
    }

    /// Every usage record, any org.
    pub fn all_usage(&self) -> Vec<UsageRecord> {
        self.data().usage.values().cloned().collect()
    }

    fn apply_usage(data: &mut Data, record: &UsageRecord) -> Write {
        let exists = data.usage.contains_key(&record.key);
        keyed(exists, || {
            data.totals
                .entry((record.org.clone(), record.period.clone()))
                .or_insert_with(|| PeriodTotal::zero(record.org.clone(), record.period.clone()))
                .add(&record_units(record));
            data.usage.insert(record.key.clone(), record.clone())
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_org(&self, org: &Organization) -> Result<(), StoreError> {
        let mut d = self.data();
        if d.orgs.contains_key(&org.id) {
            return Err(StoreError::Duplicate(org.id.clone()));
        }
        d.orgs.insert(org.id.clone(), org.clone());
        Ok(())
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Organization>, StoreError> {
        Ok(self.data().orgs.get(id).cloned())
    }

    async fn list_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        Ok(self.data().orgs.values().cloned().collect())
    }

    async fn update_org(&self, org: &Organization) -> Result<(), StoreError> {
        match self.data().orgs.get_mut(&org.id) {
            Some(existing) => {
                *existing = org.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(org.id.clone())),
        }
    }

    async fn record_usage(&self, record: &UsageRecord) -> Result<Write, StoreError> {
        let results = self
            .record_usage_batch(std::slice::from_ref(record))
            .await?;
        Ok(results.first().copied().unwrap_or(Write::Applied))
    }

    async fn record_usage_batch(&self, records: &[UsageRecord]) -> Result<Vec<Write>, StoreError> {
        let mut d = self.data();
        if d.fail_usage_writes > 0 {
            d.fail_usage_writes -= 1;
            return Err(StoreError::Unavailable("injected failure".into()));
        }
        let writes = records
            .iter()
            .map(|r| Self::apply_usage(&mut d, r))
            .collect();
        if d.lose_usage_acks > 0 {
            d.lose_usage_acks -= 1;
            return Err(StoreError::Unavailable(
                "injected lost acknowledgement".into(),
            ));
        }
        Ok(writes)
    }

    async fn usage_for_period(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let mut out: Vec<UsageRecord> = self
            .data()
            .usage
            .values()
            .filter(|r| &r.org == org && &r.period == period)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.window_start, &a.key).cmp(&(b.window_start, &b.key)));
        Ok(out)
    }

    async fn period_total(&self, org: &OrgId, period: &Period) -> Result<PeriodTotal, StoreError> {
        Ok(self
            .data()
            .totals
            .get(&(org.clone(), period.clone()))
            .cloned()
            .unwrap_or_else(|| PeriodTotal::zero(org.clone(), period.clone())))
    }

    async fn period_totals(&self, period: &Period) -> Result<Vec<PeriodTotal>, StoreError> {
        Ok(self
            .data()
            .totals
            .values()
            .filter(|t| &t.period == period)
            .cloned()
            .collect())
    }

    async fn set_period_total(&self, total: &PeriodTotal) -> Result<(), StoreError> {
        self.data()
            .totals
            .insert((total.org.clone(), total.period.clone()), total.clone());
        Ok(())
    }

    async fn adjustments_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        let mut out: Vec<UsageAdjustment> = self
            .data()
            .adjustments
            .iter()
            .filter(|a| &a.period == period)
            .cloned()
            .collect();
        out.sort_by_key(|a| a.created_at);
        Ok(out)
    }

    async fn add_usage_adjustment(&self, a: &UsageAdjustment) -> Result<Write, StoreError> {
        let mut d = self.data();
        let exists = d.adjustments.iter().any(|x| x.key == a.key);
        Ok(keyed(exists, || d.adjustments.push(a.clone())))
    }

    async fn usage_adjustments(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        let d = self.data();
        let mut out: Vec<UsageAdjustment> = d
            .adjustments
            .iter()
            .filter(|a| &a.org == org && &a.period == period)
            .cloned()
            .collect();
        out.sort_by_key(|a| a.created_at);
        Ok(out)
    }

    async fn set_api_token_hash(&self, org: &OrgId, hash: &str) -> Result<(), StoreError> {
        let mut d = self.data();
        if !d.orgs.contains_key(org) {
            return Err(StoreError::NotFound(org.clone()));
        }
        d.tokens.insert(org.clone(), hash.to_owned());
        Ok(())
    }

    async fn api_token_hash(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        Ok(self.data().tokens.get(org).cloned())
    }

    async fn mark_event_processed(&self, event: &ProcessedEvent) -> Result<Write, StoreError> {
        let mut d = self.data();
        let exists = d.events.contains_key(&event.event_id);
        Ok(keyed(exists, || {
            d.events.insert(event.event_id.clone(), event.clone())
        }))
    }

    async fn insert_billing_record(&self, record: &BillingRecord) -> Result<Write, StoreError> {
        let mut d = self.data();
        let exists = d.billing.contains_key(&record.key);
        Ok(keyed(exists, || {
            d.billing.insert(record.key.clone(), record.clone())
        }))
    }

    async fn billing_record(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let key = crate::domain::billing_record::billing_key(org, period);
        Ok(self.data().billing.get(&key).cloned())
    }

    async fn billing_records_for_org(&self, org: &OrgId) -> Result<Vec<BillingRecord>, StoreError> {
        let mut out: Vec<BillingRecord> = self
            .data()
            .billing
            .values()
            .filter(|r| &r.org == org)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.period.cmp(&b.period));
        Ok(out)
    }

    async fn billing_records_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let mut out: Vec<BillingRecord> = self
            .data()
            .billing
            .values()
            .filter(|r| &r.period == period)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.org.cmp(&b.org));
        Ok(out)
    }

    async fn due_billing_records(
        &self,
        state: BillingState,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let mut out: Vec<BillingRecord> = self
            .data()
            .billing
            .values()
            .filter(|r| r.state == state && r.next_attempt_at <= now)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.next_attempt_at, &a.key).cmp(&(b.next_attempt_at, &b.key)));
        out.truncate(limit);
        Ok(out)
    }

    async fn billing_record_by_item(
        &self,
        item_id: &str,
    ) -> Result<Option<BillingRecord>, StoreError> {
        Ok(self
            .data()
            .billing
            .values()
            .find(|r| r.provider_item_id.as_deref() == Some(item_id))
            .cloned())
    }

    async fn claim(
        &self,
        name: &str,
        _now: UnixMillis,
        until: UnixMillis,
    ) -> Result<Claim, StoreError> {
        let mut d = self.data();
        if let Some(held) = d.claims.get(name) {
            return Ok(Claim::Held(*held));
        }
        d.claims.insert(name.to_owned(), until);
        Ok(Claim::Won)
    }

    async fn update_billing_record_if_unchanged(
        &self,
        record: &BillingRecord,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut d = self.data();
        match d.billing.get_mut(&record.key) {
            Some(current) if current.updated_at == seen_updated_at => {
                *current = record.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_calibration(&self, record: &CalibrationRecord) -> Result<Write, StoreError> {
        let mut d = self.data();
        let exists = d.calibrations.contains_key(&record.period);
        Ok(keyed(exists, || {
            d.calibrations.insert(record.period.clone(), record.clone())
        }))
    }

    async fn replace_calibration(&self, record: &CalibrationRecord) -> Result<(), StoreError> {
        self.data()
            .calibrations
            .insert(record.period.clone(), record.clone());
        Ok(())
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.data().settings.get(key).cloned())
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.data()
            .settings
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn calibrations(&self) -> Result<Vec<CalibrationRecord>, StoreError> {
        Ok(self.data().calibrations.values().cloned().collect())
    }

    async fn add_notification(&self, n: &Notification) -> Result<Write, StoreError> {
        let mut d = self.data();
        let exists = d.notifications.iter().any(|x| x.key == n.key);
        Ok(keyed(exists, || d.notifications.push(n.clone())))
    }

    async fn notifications_for_org(&self, org: &OrgId) -> Result<Vec<Notification>, StoreError> {
        let mut out: Vec<Notification> = self
            .data()
            .notifications
            .iter()
            .filter(|n| &n.org == org)
            .cloned()
            .collect();
        out.sort_by_key(|n| n.created_at);
        Ok(out)
    }

    async fn append_tier_change(&self, change: &TierChange) -> Result<(), StoreError> {
        self.data().tier_changes.push(change.clone());
        Ok(())
    }

    async fn tier_history(&self, org: &OrgId) -> Result<Vec<TierChange>, StoreError> {
        let mut out: Vec<TierChange> = self
            .data()
            .tier_changes
            .iter()
            .filter(|c| &c.org == org)
            .cloned()
            .collect();
        out.sort_by_key(|c| c.at);
        Ok(out)
    }

    async fn tier_changes_since(&self, since: UnixMillis) -> Result<Vec<TierChange>, StoreError> {
        let mut out: Vec<TierChange> = self
            .data()
            .tier_changes
            .iter()
            .filter(|c| c.at >= since)
            .cloned()
            .collect();
        out.sort_by_key(|c| c.at);
        Ok(out)
    }

    async fn update_org_if_unchanged(
        &self,
        org: &Organization,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut data = self.data();
        let current = data
            .orgs
            .get(&org.id)
            .ok_or_else(|| StoreError::NotFound(org.id.clone()))?;
        if current.updated_at != seen_updated_at {
            return Ok(false);
        }
        data.orgs.insert(org.id.clone(), org.clone());
        Ok(true)
    }

    async fn org_by_stripe_customer(
        &self,
        customer_id: &str,
    ) -> Result<Option<Organization>, StoreError> {
        Ok(self
            .data()
            .orgs
            .values()
            .find(|o| o.stripe_customer_id.as_deref() == Some(customer_id))
            .cloned())
    }

    async fn record_subscription_event(
        &self,
        subscription_id: &str,
        created: i64,
        event_id: &str,
    ) -> Result<SubscriptionOrder, StoreError> {
        let mut data = self.data();
        if let Some((applied_created, applied_event_id)) =
            data.subscription_events.get(subscription_id)
        {
            if *applied_created > created {
                return Ok(SubscriptionOrder::Stale {
                    applied_created: *applied_created,
                    applied_event_id: applied_event_id.clone(),
                });
            }
        }
        data.subscription_events
            .insert(subscription_id.to_owned(), (created, event_id.to_owned()));
        Ok(SubscriptionOrder::Current)
    }

    async fn enqueue_job(&self, job: &Job) -> Result<Write, StoreError> {
        let mut data = self.data();
        let exists = data.jobs.contains_key(&job.id);
        Ok(keyed(exists, || {
            data.jobs.insert(job.id.clone(), job.clone())
        }))
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        Ok(self.data().jobs.get(id).cloned())
    }

    async fn claim_due_jobs(
        &self,
        kind: JobKind,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut data = self.data();
        let mut due: Vec<&mut Job> = data
            .jobs
            .values_mut()
            .filter(|j| {
                j.kind == kind && j.status == JobStatus::Pending && j.next_attempt_at <= now
            })
            .collect();
        due.sort_by_key(|j| (j.next_attempt_at, j.created_at));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|j| {
                j.next_attempt_at = lease_until;
                j.attempts += 1;
                j.clone()
            })
            .collect())
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        let mut data = self.data();
        match data.jobs.get_mut(&job.id) {
            Some(j) => {
                *j = job.clone();
                Ok(())
            }
            None => Err(StoreError::Unavailable(format!("no job {}", job.id))),
        }
    }
}
