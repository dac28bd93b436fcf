//! Railway's public GraphQL API (`https://backboard.railway.com/graphql/v2`,
//! bearer token from `RAILWAY_API_TOKEN`): what Railway measured for a
//! period, for calibration.
//!
//! One operation, `metrics` — the query Railway's own CLI sends for
//! `railway metrics` — over the project, from the period's start to its
//! end, `CPU_USAGE` (vCPU) and `MEMORY_USAGE_GB` (GB) grouped by
//! `SERVICE_ID`, sampled hourly. Each sample is the average over its hour,
//! so a service's vCPU-minutes are Σ value × 60 (GB-minutes likewise).
//! Decimal throughout: the JSON numbers are read as their text.
//!
//! Errors are distinct (`SourceError`): no token, 401/403, 429, other HTTP
//! statuses, GraphQL `errors`, unreadable JSON — never a silent zero.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use dynabase_actors::{
    calibration::source::{Measured, SourceError, UsageSource},
    domain::records::Period,
};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::settings::Secret;

/// Railway's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://backboard.railway.com/graphql/v2";
/// Hourly samples: 744 per series for a 31-day month.
const SAMPLE_SECONDS: i64 = 3600;

const METRICS_QUERY: &str = "query metrics($projectId: String, $startDate: DateTime!, \
$endDate: DateTime, $measurements: [MetricMeasurement!]!, $sampleRateSeconds: Int, \
$groupBy: [MetricTag!]) { metrics(projectId: $projectId, startDate: $startDate, \
endDate: $endDate, measurements: $measurements, sampleRateSeconds: $sampleRateSeconds, \
groupBy: $groupBy) { measurement tags { serviceId } values { ts value } } }";

#[derive(Debug, thiserror::Error)]
pub enum RailwayClientError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A [`UsageSource`] on Railway's API.
pub struct RailwayUsage {
    client: reqwest::Client,
    endpoint: String,
    token: Secret,
    project_id: String,
}

impl RailwayUsage {
    pub fn new(
        token: Secret,
        project_id: &str,
        endpoint: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, RailwayClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            client: reqwest::Client::builder().timeout(timeout).build()?,
            endpoint: endpoint.unwrap_or(DEFAULT_ENDPOINT).to_owned(),
            token,
            project_id: project_id.to_owned(),
        })
    }
}

/// A JSON number (or numeric string) as an exact decimal.
fn decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => Decimal::from_str(&n.to_string())
            .or_else(|_| Decimal::from_scientific(&n.to_string()))
            .ok(),
        Value::String(s) => Decimal::from_str(s).ok(),
        _ => None,
    }
}

/// Reads the `metrics` answer (or its `errors`).
pub fn parse_metrics(body: &Value) -> Result<Measured, SourceError> {
    if let Some(errors) = body.get("errors").and_then(Value::as_array) {
        if !errors.is_empty() {
            let messages: Vec<&str> = errors
                .iter()
                .map(|e| e["message"].as_str().unwrap_or("(no message)"))
                .collect();
            return Err(SourceError::GraphQl(messages.join("; ")));
        }
    }
    let series = body["data"]["metrics"]
        .as_array()
        .ok_or_else(|| SourceError::Malformed("no data.metrics list".into()))?;
    let per_sample = Decimal::from(SAMPLE_SECONDS / 60);
    let mut measured = Measured::default();
    for s in series {
        let measurement = s["measurement"]
            .as_str()
            .ok_or_else(|| SourceError::Malformed("a series without a measurement".into()))?;
        let service = s["tags"]["serviceId"]
            .as_str()
            .unwrap_or("(none)")
            .to_owned();
        let values = s["values"]
            .as_array()
            .ok_or_else(|| SourceError::Malformed(format!("{measurement}: no values")))?;
        let mut minutes = Decimal::ZERO;
        for v in values {
            let value = decimal(&v["value"]).ok_or_else(|| {
                SourceError::Malformed(format!("{measurement}: a value is not a number"))
            })?;
            minutes += value * per_sample;
        }
        let slot = measured.by_service.entry(service).or_default();
        match measurement {
            "CPU_USAGE" => {
                measured.vcpu_minutes += minutes;
                slot.0 += minutes;
            }
            "MEMORY_USAGE_GB" => {
                measured.gb_minutes += minutes;
                slot.1 += minutes;
            }
            _ => {}
        }
    }
    Ok(measured)
}

#[async_trait]
impl UsageSource for RailwayUsage {
    async fn measured(&self, period: &Period) -> Result<Measured, SourceError> {
        if self.token.is_empty() {
            return Err(SourceError::NotConfigured);
        }
        let variables = json!({
            "projectId": self.project_id,
            "startDate": period.start().to_rfc3339(),
            "endDate": period.end().to_rfc3339(),
            "measurements": ["CPU_USAGE", "MEMORY_USAGE_GB"],
            "sampleRateSeconds": SAMPLE_SECONDS,
            "groupBy": ["SERVICE_ID"],
        });
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.token.expose())
            .json(&json!({ "query": METRICS_QUERY, "variables": variables }))
            .send()
            .await
            .map_err(|e| SourceError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return Err(SourceError::Unauthorized(status)),
            429 => return Err(SourceError::RateLimited),
            _ => return Err(SourceError::Http(status)),
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| SourceError::Malformed(e.without_url().to_string()))?;
        let measured = parse_metrics(&body)?;
        // Unused map entries (a series with no values) add nothing.
        let _: &BTreeMap<String, (Decimal, Decimal)> = &measured.by_service;
        Ok(measured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_become_minutes_per_service_and_errors_are_named() {
        let body = json!({"data": {"metrics": [
            {"measurement": "CPU_USAGE", "tags": {"serviceId": "svc-a"},
             "values": [{"ts": 1, "value": 0.5}, {"ts": 2, "value": 1.25}]},
            {"measurement": "MEMORY_USAGE_GB", "tags": {"serviceId": "svc-a"},
             "values": [{"ts": 1, "value": 2}]},
        ]}});
        let m = parse_metrics(&body).unwrap();
        assert_eq!(m.vcpu_minutes, Decimal::from(105), "(0.5 + 1.25) × 60");
        assert_eq!(m.gb_minutes, Decimal::from(120));
        assert_eq!(
            m.by_service["svc-a"],
            (Decimal::from(105), Decimal::from(120))
        );
        let err = parse_metrics(&json!({"errors": [{"message": "Not Authorized"}], "data": null}));
        assert_eq!(err, Err(SourceError::GraphQl("Not Authorized".into())));
        assert!(matches!(
            parse_metrics(&json!({"data": {}})),
            Err(SourceError::Malformed(_))
        ));
        let bad = json!({"data": {"metrics": [{"measurement": "CPU_USAGE", "values": [{"value": "x"}]}]}});
        assert!(matches!(
            parse_metrics(&bad),
            Err(SourceError::Malformed(_))
        ));
    }
}
