//! Calibration: our usage estimates compared with what Railway measured
//! and billed (spec "Monthly Calibration"; DESIGN.md Q1: ±20% is fine,
//! above it alert; Q4: never change the formulas automatically).
//!
//! - `compute`: the arithmetic (pure, exact);
//! - `source`: the port to Railway's figures;
//! - `margin`: revenue against cost per tier.

use std::time::Duration;

use rust_decimal::Decimal;

pub mod compute;
pub mod margin;
pub mod source;

/// `[calibration]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationConfig {
    /// Railway's price of one vCPU-minute.
    pub vcpu_minute_price: Decimal,
    /// Railway's price of one GB-minute of memory.
    pub gb_minute_price: Decimal,
    /// Above this variance (0.20 = 20%) a calibration raises an alert.
    pub threshold: Decimal,
    /// A period is calibrated this long after it ends (Railway's figures
    /// settle later than ours).
    pub settle_delay: Duration,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            // Railway's published $20 per vCPU-month and $10 per GB-month,
            // per minute.
            vcpu_minute_price: Decimal::new(463, 6),
            gb_minute_price: Decimal::new(231, 6),
            threshold: Decimal::new(20, 2),
            settle_delay: Duration::from_secs(86_400),
        }
    }
}
