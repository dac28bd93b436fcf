//! The store port: everything the platform keeps, behind one trait.
//!
//! MongoDB is the source of truth in production; an embedded file store serves
//! when no MongoDB is configured. Both live in the binary's `adapters` module
//! and pass one conformance suite (`tests/store_conformance.rs`).
//!
//! Every write that could be retried after a lost acknowledgement is keyed and
//! reports [`Write::AlreadyApplied`] the second time instead of applying twice.

use async_trait::async_trait;
use rust_decimal::Decimal;

use crate::domain::{
    billing::SubscriptionOrder,
    billing_record::{BillingRecord, BillingState},
    compute::Phase,
    jobs::{Job, JobKind},
    org_id::OrgId,
    organization::Organization,
    period_total::PeriodTotal,
    records::{
        CalibrationRecord, Notification, Period, ProcessedEvent, TierChange, UsageAdjustment,
        UsageRecord, Write,
    },
    time::UnixMillis,
};

/// What [`Store::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds it now.
    Won,
    /// Taken before, by a lease that ends at this instant.
    Held(UnixMillis),
}

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("organization `{0}` already exists")]
    Duplicate(OrgId),
    #[error("organization `{0}` not found")]
    NotFound(OrgId),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_org(&self, org: &Organization) -> Result<(), StoreError>;
    async fn get_org(&self, id: &OrgId) -> Result<Option<Organization>, StoreError>;
    async fn list_orgs(&self) -> Result<Vec<Organization>, StoreError>;
    /// The organizations the tier lifecycle may have to act on, by id: a
    /// scheduled change effective at or before `now`, or past due since at
    /// or before `past_due_since_by`. The caller decides with the policy (a
    /// past-due FREE organization has nothing to move). This default scans
    /// every organization here; a store that can filter on its side does.
    async fn orgs_with_lifecycle_due(
        &self,
        now: UnixMillis,
        past_due_since_by: UnixMillis,
    ) -> Result<Vec<Organization>, StoreError> {
        let mut orgs = self.list_orgs().await?;
        orgs.retain(|o| {
            o.pending_tier_change
                .as_ref()
                .is_some_and(|p| p.effective_at <= now)
                || o.lifecycle
                    .past_due_since
                    .is_some_and(|since| since <= past_due_since_by)
        });
        orgs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(orgs)
    }
    /// The organizations scale-to-zero has to look at, by id: a driver that
    /// can suspend (not `always_on`) and a phase other than `suspended`.
    /// Suspended organizations cost the idle check nothing this way. This
    /// default scans every organization; a store that can filter on its
    /// side does.
    async fn awake_suspendable_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        let mut orgs = self.list_orgs().await?;
        orgs.retain(|o| o.compute.spec.can_suspend() && o.compute.state.phase != Phase::Suspended);
        orgs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(orgs)
    }
    /// How many organizations were created before `at` (those a period
    /// ending at `at` may bill). This default scans every organization.
    async fn count_orgs_created_before(&self, at: UnixMillis) -> Result<usize, StoreError> {
        Ok(self
            .list_orgs()
            .await?
            .iter()
            .filter(|o| o.created_at < at)
            .count())
    }
    /// Replaces an existing organization; `NotFound` if there is none.
    async fn update_org(&self, org: &Organization) -> Result<(), StoreError>;

    /// Adds usage once per `record.key`.
    async fn record_usage(&self, record: &UsageRecord) -> Result<Write, StoreError>;
    /// Adds each record once per key, in one round trip where the store
    /// can; the answers are in the order of `records`. On `Err` some records
    /// may have been applied: retrying the same records is always safe.
    async fn record_usage_batch(&self, records: &[UsageRecord]) -> Result<Vec<Write>, StoreError> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(self.record_usage(record).await?);
        }
        Ok(out)
    }
    /// By window, then key.
    async fn usage_for_period(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageRecord>, StoreError>;

    /// The org's billable vCPU-hours for `period`: its period total plus
    /// adjustments. Reads one total and the (few) adjustments, never the
    /// records.
    async fn billable_vcpu_hours(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Decimal, StoreError> {
        let total = self.period_total(org, period).await?;
        let adjustments = self.usage_adjustments(org, period).await?;
        Ok(crate::domain::usage_report::adjusted_vcpu_hours(
            total.vcpu_hours(),
            &adjustments,
        ))
    }

    /// The running total that [`record_usage`](Store::record_usage) and
    /// [`record_usage_batch`](Store::record_usage_batch) keep for each org
    /// and period: every applied record is added exactly once, even when a
    /// write is retried or a writer dies half-way. Zero when there is none.
    async fn period_total(&self, org: &OrgId, period: &Period) -> Result<PeriodTotal, StoreError>;
    /// Every org's total for `period` (orgs with no usage are absent).
    async fn period_totals(&self, period: &Period) -> Result<Vec<PeriodTotal>, StoreError>;
    /// Replaces a total (reconciliation's repair). Racing a usage write can
    /// lose that write's share: repair when no replica is writing usage.
    async fn set_period_total(&self, total: &PeriodTotal) -> Result<(), StoreError>;

    /// Adds an operator adjustment once per `adjustment.key`.
    async fn add_usage_adjustment(&self, adjustment: &UsageAdjustment)
        -> Result<Write, StoreError>;
    /// Oldest first.
    async fn usage_adjustments(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError>;
    /// Every org's adjustments for `period`, oldest first.
    async fn adjustments_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError>;

    /// Sets (or replaces: rotation) the SHA-256 hash of the org's API token.
    async fn set_api_token_hash(&self, org: &OrgId, hash: &str) -> Result<(), StoreError>;
    async fn api_token_hash(&self, org: &OrgId) -> Result<Option<String>, StoreError>;

    /// Marks a webhook event as processed; `AlreadyApplied` if it was.
    async fn mark_event_processed(&self, event: &ProcessedEvent) -> Result<Write, StoreError>;

    // ----- billing ------------------------------------------------------------

    /// Adds a record once per `record.key` (org and period); `AlreadyApplied`
    /// if one exists, whatever its state.
    async fn insert_billing_record(&self, record: &BillingRecord) -> Result<Write, StoreError>;
    async fn billing_record(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<BillingRecord>, StoreError>;
    /// By period.
    async fn billing_records_for_org(&self, org: &OrgId) -> Result<Vec<BillingRecord>, StoreError>;
    /// By org.
    async fn billing_records_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<BillingRecord>, StoreError>;
    /// Records in `state` whose `next_attempt_at` is at or before `now`,
    /// oldest due first, at most `limit`.
    async fn due_billing_records(
        &self,
        state: BillingState,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError>;
    /// The record whose provider item id is `item_id`, if any.
    async fn billing_record_by_item(
        &self,
        item_id: &str,
    ) -> Result<Option<BillingRecord>, StoreError>;
    /// Takes the claim `name` until `until`, if nobody holds it: the one
    /// exclusive step between replicas, an insert of a unique key (atomic on
    /// every server; FerretDB v1's conditional updates are not — two
    /// concurrent compare-and-sets on one document can both succeed).
    /// `Held(t)`: somebody took it, with a lease that ends (or ended) at `t`.
    async fn claim(
        &self,
        name: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<Claim, StoreError>;
    /// Replaces a record only if its stored `updated_at` is still
    /// `seen_updated_at` (so of two replicas only one moves it on);
    /// `Ok(false)` when it changed in between or does not exist.
    async fn update_billing_record_if_unchanged(
        &self,
        record: &BillingRecord,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// One calibration per period; a second one for the same period is refused.
    async fn record_calibration(&self, record: &CalibrationRecord) -> Result<Write, StoreError>;
    /// Writes the period's calibration, replacing any (an operator's manual
    /// bill, or a forced re-run, supersedes the earlier one).
    async fn replace_calibration(&self, record: &CalibrationRecord) -> Result<(), StoreError>;
    async fn calibrations(&self) -> Result<Vec<CalibrationRecord>, StoreError>;

    /// A platform-wide switch operators change at run time (for example
    /// `billing.mode`), shared by every replica; `None` when never set.
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;

    async fn add_notification(&self, n: &Notification) -> Result<Write, StoreError>;
    async fn notifications_for_org(&self, org: &OrgId) -> Result<Vec<Notification>, StoreError>;

    async fn append_tier_change(&self, change: &TierChange) -> Result<(), StoreError>;
    /// Oldest first.
    async fn tier_history(&self, org: &OrgId) -> Result<Vec<TierChange>, StoreError>;
    /// Every org's tier changes at or after `since`, oldest first (what
    /// billing needs to cut closed periods into tier segments).
    async fn tier_changes_since(&self, since: UnixMillis) -> Result<Vec<TierChange>, StoreError>;

    // ----- tier lifecycle ---------------------------------------------------

    /// Replaces an organization only if its stored `updated_at` is still
    /// `seen_updated_at` (compare-and-set, so replicas applying the same
    /// lifecycle step do not both apply it). `Ok(false)` when it changed in
    /// between; `NotFound` if there is none.
    async fn update_org_if_unchanged(
        &self,
        org: &Organization,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// The organization linked to a billing-provider customer, if any.
    async fn org_by_stripe_customer(
        &self,
        customer_id: &str,
    ) -> Result<Option<Organization>, StoreError>;

    /// Records that an event created at `created` (provider seconds) is about
    /// to be applied to `subscription_id`, unless an event created later was
    /// recorded before: then nothing changes and `Stale` names that event.
    /// Equal times count as current (the provider's clock has one-second
    /// resolution, and a retried event must pass again).
    async fn record_subscription_event(
        &self,
        subscription_id: &str,
        created: i64,
        event_id: &str,
    ) -> Result<SubscriptionOrder, StoreError>;

    /// Adds a job once per `job.id`; `AlreadyApplied` if that id exists, in
    /// whatever state.
    async fn enqueue_job(&self, job: &Job) -> Result<Write, StoreError>;

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Claims up to `limit` pending jobs of `kind` due at `now` (oldest
    /// first): each claimed job's `next_attempt_at` becomes `lease_until` and
    /// its `attempts` grows by one, atomically per job, so two replicas never
    /// claim the same job for the same lease. Returns the claimed jobs.
    async fn claim_due_jobs(
        &self,
        kind: JobKind,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// Replaces a job (its runner records the outcome); `Unavailable` if it
    /// does not exist.
    async fn update_job(&self, job: &Job) -> Result<(), StoreError>;
}
