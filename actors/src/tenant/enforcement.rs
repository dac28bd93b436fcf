//! Shadow enforcement (spec "Migration Path": track what the limits would
//! do before enforcing them). In `shadow`, every connection and query cycle
//! is admitted, and what enforcement would have refused is counted instead.
//!
//! The platform-wide mode is an [`EnforcementSwitch`] every tenant actor
//! and gate share, so switching applies to live sessions at once; an org
//! may override it. Query cycles in shadow go through a model of what the
//! enforcing gate does (GCRA with the same queue delay): a cycle that
//! enforcement would have made wait longer than the queue delay counts as
//! refused; the others advance the model as if they had run.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The store setting that switches every replica at run time.
pub const ENFORCEMENT_SETTING: &str = "limits.enforcement";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Enforce,
    Shadow,
}

impl Enforcement {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enforce" => Some(Self::Enforce),
            "shadow" => Some(Self::Shadow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// The platform-wide mode, shared by every tenant actor and gate.
#[derive(Debug, Clone, Default)]
pub struct EnforcementSwitch(Arc<AtomicBool>);

impl EnforcementSwitch {
    pub fn new(mode: Enforcement) -> Self {
        let s = Self::default();
        s.set(mode);
        s
    }

    pub fn set(&self, mode: Enforcement) {
        self.0.store(mode == Enforcement::Shadow, Ordering::Relaxed);
    }

    pub fn get(&self) -> Enforcement {
        if self.0.load(Ordering::Relaxed) {
            Enforcement::Shadow
        } else {
            Enforcement::Enforce
        }
    }
}

/// What enforcement would have refused, per org (this replica).
#[derive(Debug, Default)]
pub struct ShadowCounts {
    pub connections: AtomicU64,
    pub query_cycles: AtomicU64,
}

/// The enforcing gate's decision, modelled: GCRA (one cycle per `interval`,
/// `burst` at once) with a queue of at most `max_delay`.
#[derive(Debug)]
pub struct ShadowModel {
    epoch: Instant,
    /// Theoretical arrival time, in nanoseconds since `epoch`.
    tat: AtomicU64,
}

impl Default for ShadowModel {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }
}

impl ShadowModel {
    /// Whether enforcement would have refused a cycle now (it then does not
    /// count against the rate, as a refused cycle does not).
    pub fn would_refuse(&self, qps: u32, burst: u32, max_delay: Duration) -> bool {
        let interval = 1_000_000_000 / u64::from(qps.max(1));
        let tolerance = interval.saturating_mul(u64::from(burst.max(1)) - 1);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let max_delay = u64::try_from(max_delay.as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let delay = start.saturating_sub(tolerance).saturating_sub(now);
            if delay > max_delay {
                return true;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return false,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_admits_a_burst_and_the_queue_then_refuses() {
        let model = ShadowModel::default();
        // 10/s, burst 10, 250 ms of queue: 10 at once, then 2 queued
        // (100 and 200 ms), then refusals.
        let admitted = (0..20)
            .filter(|_| !model.would_refuse(10, 10, Duration::from_millis(250)))
            .count();
        assert_eq!(admitted, 12);
        let switch = EnforcementSwitch::new(Enforcement::Shadow);
        assert_eq!(switch.clone().get(), Enforcement::Shadow);
        switch.set(Enforcement::Enforce);
        assert_eq!(switch.get(), Enforcement::Enforce);
    }
}
