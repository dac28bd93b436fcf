//! Organizations recently found not to exist.
//!
//! The organization in a connection's user name is the client's to choose,
//! so without this every connection naming a missing organization would
//! cost a cache and store read. A miss is remembered for [`UNKNOWN_FOR`];
//! creating the organization (on this replica, or announced by another)
//! forgets it at once, so the TTL only bounds staleness when an
//! announcement is lost. At most [`MAX_UNKNOWN`] names are kept: a client
//! cycling through random names cannot grow memory, it only loses the cache.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::domain::org_id::OrgId;

/// How long a miss is remembered.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(2);
/// Most names remembered at once.
pub const MAX_UNKNOWN: usize = 10_000;

#[derive(Debug, Default)]
pub struct UnknownOrgs {
    /// When each miss expires.
    until: DashMap<OrgId, Instant>,
}

impl UnknownOrgs {
    /// Whether `id` was found missing less than [`UNKNOWN_FOR`] before `now`.
    pub fn contains(&self, id: &OrgId, now: Instant) -> bool {
        let expired = match self.until.get(id) {
            None => return false,
            Some(until) => *until <= now,
        };
        if expired {
            self.until.remove_if(id, |_, until| *until <= now);
        }
        !expired
    }

    /// Remembers that `id` was found missing at `now`.
    pub fn remember(&self, id: &OrgId, now: Instant) {
        if self.until.len() >= MAX_UNKNOWN {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_UNKNOWN {
                return;
            }
        }
        self.until.insert(id.clone(), now + UNKNOWN_FOR);
    }

    /// `id` exists now.
    pub fn forget(&self, id: &OrgId) {
        self.until.remove(id);
    }

    /// Every organization may exist now (announcements may have been missed).
    pub fn clear(&self) {
        self.until.clear();
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(id: &str) -> OrgId {
        OrgId::parse(id).expect("org id")
    }

    #[test]
    fn a_miss_is_remembered_until_it_expires_or_is_forgotten() {
        let unknown = UnknownOrgs::default();
        let t0 = Instant::now();
        assert!(!unknown.contains(&org("acme"), t0));
        unknown.remember(&org("acme"), t0);
        assert!(unknown.contains(&org("acme"), t0 + UNKNOWN_FOR / 2));
        assert!(!unknown.contains(&org("acme"), t0 + UNKNOWN_FOR));
        assert!(unknown.is_empty(), "an expired miss is dropped when seen");

        unknown.remember(&org("acme"), t0);
        unknown.forget(&org("acme"));
        assert!(!unknown.contains(&org("acme"), t0));
    }

    #[test]
    fn random_names_cannot_grow_it_past_its_bound() {
        let unknown = UnknownOrgs::default();
        let t0 = Instant::now();
        for i in 0..MAX_UNKNOWN + 100 {
            unknown.remember(&org(&format!("random-{i}")), t0);
        }
        assert_eq!(unknown.len(), MAX_UNKNOWN);
        // Once the old misses have expired, new ones are kept again.
        let later = t0 + UNKNOWN_FOR;
        unknown.remember(&org("fresh"), later);
        assert_eq!(unknown.len(), 1);
        assert!(unknown.contains(&org("fresh"), later));
    }
}
