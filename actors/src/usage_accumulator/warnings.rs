//! Usage warnings at 80% and 100% of the tier's included vCPU-hours.
//!
//! "Exactly once per org, period and threshold, across replicas and
//! restarts" rests on the store, not on memory: a warning is a
//! [`Notification`] keyed `usage:{org}:{period}:{threshold}`, and only the
//! writer that gets [`Write::Applied`] announces it. The in-memory state here
//! only saves store reads: which (org, period) pairs had usage written since
//! their last check, and which thresholds are known to have fired.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use rust_decimal::Decimal;

use crate::{
    billing::usage_policy::{PolicyError, UsagePolicy},
    domain::{
        catalog::TierCatalog,
        org_id::OrgId,
        records::{Notification, Period, UsageRecord, Write},
        time::UnixMillis,
    },
    lifecycle::notifier::{NotificationKind, NotifierError},
    store::{Store, StoreError},
};

/// Thresholds in percent of the included vCPU-hours.
pub const THRESHOLDS: [u32; 2] = [80, 100];

/// The notification key that makes a warning happen once.
pub fn warning_key(org: &OrgId, period: &Period, threshold: u32) -> String {
    format!("usage:{org}:{period}:{threshold}")
}

type OrgPeriod = (OrgId, Period);

/// Which checks are due.
#[derive(Debug, Default)]
pub struct Warnings {
    /// Usage written since the last check; value: when last checked.
    dirty: HashMap<OrgPeriod, Option<Instant>>,
    last_checked: HashMap<OrgPeriod, Instant>,
    fired: HashSet<(OrgPeriod, u32)>,
    /// Pairs the usage policy still watches after every threshold fired
    /// (a spend cap not reached yet).
    watched: HashSet<OrgPeriod>,
    /// A check is running (one at a time keeps store reads bounded).
    pub checking: bool,
}

impl Warnings {
    /// Notes the orgs and periods that `written` added usage to.
    pub fn usage_written(&mut self, written: &[UsageRecord]) {
        for r in written {
            let key = (r.org.clone(), r.period.clone());
            if self.watched.contains(&key)
                || !THRESHOLDS
                    .iter()
                    .all(|t| self.fired.contains(&(key.clone(), *t)))
            {
                self.changed(key);
            }
        }
    }

    /// Something else changed the org's total (an adjustment): check it.
    pub fn changed(&mut self, key: OrgPeriod) {
        let last = self.last_checked.get(&key).copied();
        self.dirty.entry(key).or_insert(last);
    }

    /// The pairs to check now: dirty and not checked within `interval`.
    pub fn due(&mut self, now: Instant, interval: Duration) -> Vec<OrgPeriod> {
        let due: Vec<OrgPeriod> = self
            .dirty
            .iter()
            .filter(|(_, last)| last.is_none_or(|at| now.duration_since(at) >= interval))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &due {
            self.dirty.remove(key);
            self.last_checked.insert(key.clone(), now);
        }
        due
    }

    /// Thresholds a check found fired (by us or anyone before).
    pub fn fired(&mut self, key: OrgPeriod, thresholds: &[u32]) {
        for t in thresholds {
            self.fired.insert((key.clone(), *t));
        }
    }

    /// Whether the usage policy still needs checks of this pair.
    pub fn watch(&mut self, key: OrgPeriod, watching: bool) {
        if watching {
            self.watched.insert(key);
        } else {
            self.watched.remove(&key);
        }
    }

    /// A check failed: check again next time.
    pub fn retry(&mut self, key: OrgPeriod) {
        self.last_checked.remove(&key);
        self.dirty.insert(key, None);
    }
}

/// What a check found for one org and period.
#[derive(Debug)]
pub struct CheckOutcome {
    pub key: OrgPeriod,
    /// Thresholds reached (announced now or before).
    pub reached: Vec<u32>,
    /// Thresholds this call announced.
    pub announced: Vec<u32>,
    /// The usage policy wants later checks of this pair.
    pub watching: bool,
}

/// Reads the org's billable vCPU-hours for the period and records the
/// warnings reached; each is announced by the one writer whose notification
/// write is applied.
pub async fn check(
    store: Arc<dyn Store>,
    catalog: Arc<TierCatalog>,
    key: OrgPeriod,
    policy: Option<&UsagePolicy>,
    now: UnixMillis,
) -> Result<CheckOutcome, PolicyError> {
    let (org, period) = &key;
    let mut outcome = CheckOutcome {
        key: key.clone(),
        reached: Vec::new(),
        announced: Vec::new(),
        watching: false,
    };
    let Some(organization) = store.get_org(org).await? else {
        return Ok(outcome);
    };
    let limits = catalog.get(organization.tier);
    let Some(included) = limits.included_vcpu_hours.filter(|i| !i.is_zero()) else {
        // By contract: nothing to warn about.
        return Ok(outcome);
    };
    let used = store.billable_vcpu_hours(org, period).await?;
    if let Some(policy) = policy {
        outcome.watching = policy
            .evaluate(store.as_ref(), limits, &organization, period, used, now)
            .await?;
    }
    for threshold in THRESHOLDS {
        if used * Decimal::ONE_HUNDRED < included * Decimal::from(threshold) {
            continue;
        }
        outcome.reached.push(threshold);
        let notification = Notification {
            key: warning_key(org, period, threshold),
            org: org.clone(),
            kind: format!("usage-warning-{threshold}"),
            message: format!(
                "Organization {org} has used {threshold}% of the {included} vCPU-hours included \
                 in tier {} for {period} ({} vCPU-hours so far).",
                organization.tier,
                used.round_dp(6).normalize()
            ),
            created_at: now,
        };
        // The webhook is queued before the record (both once per key), so a
        // failure between the two leaves a retry that still delivers it.
        crate::lifecycle::notifier::queue_webhook(
            store.as_ref(),
            &organization,
            NotificationKind::UsageWarning,
            &notification.message,
            &notification.key,
            now,
        )
        .await
        .map_err(|e| match e {
            NotifierError::Store(e) => e,
            NotifierError::Encode(e) => StoreError::Corrupt(e.to_string()),
        })
        .map_err(PolicyError::from)?;
        if store.add_notification(&notification).await? == Write::Applied {
            outcome.announced.push(threshold);
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(org: &str) -> UsageRecord {
        UsageRecord {
            key: format!("r:{org}:db:0:1"),
            org: OrgId::parse(org).unwrap(),
            database: "db".into(),
            period: Period::parse("2026-11").unwrap(),
            window_start: UnixMillis(0),
            query_cycles: 1,
            duration_us: 1,
            vcpu_hours: Decimal::ONE,
            gb_hours: Decimal::ZERO,
        }
    }

    #[test]
    fn checks_are_rate_limited_and_stop_once_everything_fired() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(30);
        let mut w = Warnings::default();
        w.usage_written(&[record("a"), record("a"), record("b")]);
        assert_eq!(w.due(t0, interval).len(), 2);
        w.usage_written(&[record("a")]);
        assert!(w.due(t0 + Duration::from_secs(1), interval).is_empty());
        assert_eq!(w.due(t0 + interval, interval).len(), 1);
        let key = (
            OrgId::parse("a").unwrap(),
            Period::parse("2026-11").unwrap(),
        );
        w.fired(key, &THRESHOLDS);
        w.usage_written(&[record("a")]);
        assert!(w.due(t0 + interval * 10, interval).is_empty());
    }
}
