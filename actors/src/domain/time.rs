//! `UnixMillis`: wall-clock instants as milliseconds since the Unix epoch.
//!
//! Time is passed into the code that needs it (rather than read inside) so
//! tests can pick it; `UnixMillis::now()` is only called at the edges.
//! [`ClockAnchor`] places the monotonic `Instant`s the proxy measures with
//! on the wall clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl UnixMillis {
    /// `YYYY-MM-DDTHH:MM:SSZ`, for messages people read.
    pub fn to_rfc3339(self) -> String {
        let rest = self.0.div_euclid(1000).rem_euclid(86_400);
        format!(
            "{}T{:02}:{:02}:{:02}Z",
            super::calendar::day_of(self),
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        )
    }
}

/// Length of a usage window: one UTC minute.
pub const WINDOW_MS: i64 = 60_000;

impl UnixMillis {
    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Start of the UTC minute this instant falls in.
    pub fn minute_start(self) -> Self {
        Self(self.0.div_euclid(WINDOW_MS) * WINDOW_MS)
    }
}

/// A monotonic instant and the wall-clock time it was taken at. `Instant`s
/// are what the proxy measures cycles with (cheap, never jumps); the anchor
/// turns them into calendar time for usage windows. It is passed in, so tests
/// choose the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockAnchor {
    pub instant: Instant,
    pub unix: UnixMillis,
}

impl ClockAnchor {
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            unix: UnixMillis::now(),
        }
    }

    /// The wall-clock time of `at`.
    pub fn unix_at(&self, at: Instant) -> UnixMillis {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.unix.plus(after),
            None => self.unix.minus(self.instant.duration_since(at)),
        }
    }

    /// The usage window (UTC minute) `at` falls in.
    pub fn window_of(&self, at: Instant) -> UnixMillis {
        self.unix_at(at).minute_start()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_instants_for_people() {
        assert_eq!(UnixMillis(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            UnixMillis(1_761_900_000_000).to_rfc3339(),
            "2025-10-31T08:40:00Z"
        );
        assert_eq!(
            UnixMillis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn instants_map_to_minute_windows_on_both_sides_of_the_anchor() {
        let anchor = ClockAnchor {
            instant: Instant::now(),
            unix: UnixMillis(1_800_000_059_500),
        };
        let after = anchor.instant + Duration::from_millis(700);
        assert_eq!(anchor.unix_at(after), UnixMillis(1_800_000_060_200));
        assert_eq!(anchor.window_of(after), UnixMillis(1_800_000_060_000));
        if let Some(before) = anchor.instant.checked_sub(Duration::from_millis(60_000)) {
            assert_eq!(anchor.window_of(before), UnixMillis(1_799_999_940_000));
        }
        assert_eq!(UnixMillis(-1).minute_start(), UnixMillis(-60_000));
    }
}
