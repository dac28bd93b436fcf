//! The mechanism of validation: a [`Checker`] turns raw values into typed
//! ones and records a [`Problem`] for each it cannot, returning a usable
//! placeholder so that one run reports every problem. What each section
//! means is in `validate.rs`.

use std::{str::FromStr, time::Duration};

use dynabase_actors::{SessionSettings, Tier, TierLimits, UsageFactor};
use rust_decimal::Decimal;

use super::{
    raw::{NumberOrWord, RawFactor, RawTier},
    Problem,
};

/// Largest complexity × parallelism of a usage factor (vCPU-hours per hour
/// of query duration).
const MAX_VCPU_PER_HOUR: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Accumulates problems; each check returns a usable placeholder on failure
/// so validation can go on and find the rest.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn port(&mut self, key: &str, value: i64) -> u16 {
        match u16::try_from(value) {
            Ok(port) => port,
            Err(_) => {
                self.fail(
                    key,
                    format!("must be a port number from 0 to 65535, got {value}"),
                );
                0
            }
        }
    }

    pub(super) fn duration(&mut self, key: &str, value: &str) -> Duration {
        humantime::parse_duration(value).unwrap_or_else(|e| {
            self.fail(
                key,
                format!("must be a duration like \"10s\" or \"7days\": {e}"),
            );
            Duration::ZERO
        })
    }

    pub(super) fn positive_duration(&mut self, key: &str, value: &str) -> Duration {
        let d = self.duration(key, value);
        if d.is_zero() && humantime::parse_duration(value).is_ok() {
            self.fail(key, "must be greater than zero");
        }
        d
    }

    pub(super) fn count(&mut self, key: &str, value: i64, min: i64) -> u32 {
        if value < min {
            self.fail(key, format!("must be at least {min}, got {value}"));
            return 0;
        }
        u32::try_from(value).unwrap_or_else(|_| {
            self.fail(key, format!("must be at most {}, got {value}", u32::MAX));
            0
        })
    }

    /// A decimal amount, or `None` for the words that mean "no price here".
    pub(super) fn money(&mut self, key: &str, value: &str) -> Option<Decimal> {
        if matches!(value, "contract" | "none") {
            return None;
        }
        match Decimal::from_str(value) {
            Ok(d) if d.is_sign_negative() => {
                self.fail(key, format!("must not be negative, got {value}"));
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.fail(key, format!("must be a decimal string like \"0.15\", \"contract\" or \"none\", got {value:?}"));
                None
            }
        }
    }

    pub(super) fn factor(&mut self, key: &str, raw: Option<&RawFactor>) -> UsageFactor {
        let Some(raw) = raw else {
            self.fail(key, "missing usage factor");
            return UsageFactor {
                complexity: Decimal::ONE,
                parallelism: Decimal::ONE,
            };
        };
        let factor = UsageFactor {
            complexity: self.factor_value(&format!("{key}.complexity"), raw.complexity),
            parallelism: self.factor_value(&format!("{key}.parallelism"), raw.parallelism),
        };
        // Bounded, so the product and every usage figure computed from it
        // stay far inside Decimal's range (28 digits).
        match factor.complexity.checked_mul(factor.parallelism) {
            Some(product) if product <= MAX_VCPU_PER_HOUR => {
                // Period totals count vCPU-nanoseconds: exact while µs × factor
                // has at most three decimals.
                if product.normalize().scale() > 3 {
                    self.fail(
                        key,
                        "complexity × parallelism must have at most three decimal places",
                    );
                }
                factor
            }
            _ => {
                self.fail(
                    key,
                    format!("complexity × parallelism must be at most {MAX_VCPU_PER_HOUR}"),
                );
                UsageFactor {
                    complexity: Decimal::ONE,
                    parallelism: Decimal::ONE,
                }
            }
        }
    }

    /// A TOML number as the exact decimal it was written as: Rust prints an
    /// `f64` as the shortest decimal that reads back as the same value, so
    /// `1.2` becomes 1.2, not 1.1999999999999999555910790149937.
    pub(super) fn factor_value(&mut self, key: &str, v: f64) -> Decimal {
        let parsed = Decimal::from_str(&v.to_string()).ok();
        match parsed {
            Some(d) if v.is_finite() && v > 0.0 && !d.is_zero() => d,
            _ => {
                self.fail(
                    key,
                    format!("must be a positive number with at most 28 digits, got {v}"),
                );
                Decimal::ONE
            }
        }
    }

    pub(super) fn tier(&mut self, tier: Tier, raw: &RawTier) -> TierLimits {
        let key = |field: &str| format!("tiers.{}.{field}", tier.as_str());
        let max_connections = self.count(&key("max_connections"), raw.max_connections, 1);
        let qps = match &raw.qps {
            NumberOrWord::Number(n) => Some(self.count(&key("qps"), *n, 1)),
            NumberOrWord::Word(w) if w == "unlimited" => None,
            NumberOrWord::Word(w) => {
                self.fail(
                    key("qps"),
                    format!("must be a positive number or \"unlimited\", got {w:?}"),
                );
                None
            }
        };
        let burst = raw.burst.map(|b| self.count(&key("burst"), b, 1));
        for (field, value) in [
            ("session.work_mem", &raw.session.work_mem),
            ("session.temp_buffers", &raw.session.temp_buffers),
            ("session.statement_timeout", &raw.session.statement_timeout),
        ] {
            // Sent to PostgreSQL as a startup parameter: keep it to a plain value.
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.')
            {
                self.fail(
                    key(field),
                    format!(
                        "must be a PostgreSQL setting value like \"4MB\" or \"30s\", got {value:?}"
                    ),
                );
            }
        }
        TierLimits {
            tier,
            max_connections,
            qps,
            burst,
            base_fee: self.money(&key("base_fee"), &raw.base_fee),
            included_vcpu_hours: self.money(&key("included_vcpu_hours"), &raw.included_vcpu_hours),
            overage_per_vcpu_hour: self
                .money(&key("overage_per_vcpu_hour"), &raw.overage_per_vcpu_hour),
            scale_to_zero: raw.scale_to_zero,
            session: SessionSettings {
                statement_timeout: raw.session.statement_timeout.clone(),
                work_mem: raw.session.work_mem.clone(),
                temp_buffers: raw.session.temp_buffers.clone(),
            },
        }
    }
}
