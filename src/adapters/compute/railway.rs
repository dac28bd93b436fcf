//! The `railway` driver: the tenant database is a Railway service. Suspend
//! stops its latest deployment, wake restarts it, through Railway's public
//! GraphQL API (`POST {railway.api_url}`, bearer `RAILWAY_API_TOKEN`, the
//! same conventions as the calibration client in `adapters::railway`).
//!
//! Operations (docs/scale-to-zero.md says where each is shown and what is
//! unverified):
//! - `deployments(input: {serviceId, environmentId}, first: 1)` — the latest
//!   deployment: `id`, `status`, `deploymentStopped`;
//! - `deploymentStop(id)` and `deploymentRestart(id)`, both `Boolean`;
//! - the same `deployments` query, every `railway.poll_interval`, until the
//!   status is `SUCCESS` and the deployment not stopped (`FAILED`,
//!   `CRASHED`, `REMOVED`, `REMOVING` fail the wake), all within
//!   `railway.wake_timeout`.
//!
//! Railway saying `SUCCESS` is not readiness: the wake ends when the
//! organization's upstream (the service's host) answers a StartupMessage,
//! probed as the `local` driver does.

use std::time::{Duration, Instant};

use dynabase_actors::{
    domain::compute::ComputeSpec,
    scale_to_zero::{DriverError, DriverStatus},
    Organization,
};
use serde_json::{json, Value};

use super::local;
use crate::settings::Secret;

/// Railway's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://backboard.railway.com/graphql/v2";
/// Between two readiness probes of the upstream once Railway says SUCCESS.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

const DEPLOYMENTS: &str = "query deployments($input: DeploymentListInput!, $first: Int) { \
deployments(input: $input, first: $first) { edges { node { id status deploymentStopped } } } }";
const STOP: &str = "mutation deploymentStop($id: String!) { deploymentStop(id: $id) }";
const RESTART: &str = "mutation deploymentRestart($id: String!) { deploymentRestart(id: $id) }";

/// What went wrong talking to Railway; every one is a driver failure (57P03
/// to a waiting client, the text in `last_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RailwayComputeError {
    #[error("no Railway API token is configured (RAILWAY_API_TOKEN)")]
    NotConfigured,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("Railway is unreachable: {0}")]
    Unreachable(String),
    #[error("Railway refused the token (HTTP {0})")]
    Unauthorized(u16),
    #[error("Railway rate-limited the request (HTTP 429)")]
    RateLimited,
    #[error("Railway answered HTTP {0}")]
    Http(u16),
    #[error("Railway answered with GraphQL errors: {0}")]
    GraphQl(String),
    #[error("Railway's answer is not the expected shape: {0}")]
    Malformed(String),
    #[error("service {service} has no deployment in environment {environment}")]
    NoDeployment {
        service: String,
        environment: String,
    },
    #[error("Railway answered false to {0}")]
    Refused(&'static str),
    #[error("deployment {id} is {status}")]
    Failed { id: String, status: String },
}

/// The latest deployment of a service, as `deployments` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    pub status: String,
    /// `deploymentStopped`; absent reads as not stopped.
    pub stopped: bool,
}

impl Deployment {
    fn running(&self) -> bool {
        self.status == "SUCCESS" && !self.stopped
    }

    fn failed(&self) -> bool {
        matches!(
            self.status.as_str(),
            "FAILED" | "CRASHED" | "REMOVED" | "REMOVING"
        )
    }
}

/// Settings of the driver (`[railway]`).
#[derive(Debug, Clone)]
pub struct RailwayComputeConfig {
    pub token: Secret,
    /// `None`: Railway's public endpoint.
    pub endpoint: Option<String>,
    /// One request.
    pub request_timeout: Duration,
    /// Between two status reads while a deployment starts.
    pub poll_interval: Duration,
    /// A wake (restart, SUCCESS, upstream answering) longer than this failed.
    pub wake_timeout: Duration,
}

/// The driver's HTTP client; cheap to clone.
#[derive(Clone)]
pub struct RailwayCompute {
    client: reqwest::Client,
    endpoint: String,
    config: RailwayComputeConfig,
}

impl RailwayCompute {
    pub fn new(config: RailwayComputeConfig) -> Result<Self, RailwayComputeError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| RailwayComputeError::Client(e.to_string()))?;
        Ok(Self {
            client,
            endpoint: config
                .endpoint
                .clone()
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            config,
        })
    }

    pub async fn suspend(&self, org: &Organization) -> Result<(), DriverError> {
        let (service, environment) = ids(org)?;
        let step = "suspend";
        let latest = self
            .latest(service, environment)
            .await
            .map_err(|e| failed(step, e))?;
        if latest.stopped {
            return Ok(());
        }
        self.mutate(STOP, "deploymentStop", &latest.id)
            .await
            .map_err(|e| failed(step, e))
    }

    pub async fn wake(&self, org: &Organization) -> Result<(), DriverError> {
        let (service, environment) = ids(org)?;
        let step = "wake";
        let started = Instant::now();
        let limit = self.config.wake_timeout;
        let timed_out = || DriverError::TimedOut {
            step,
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        };
        let latest = self
            .latest(service, environment)
            .await
            .map_err(|e| failed(step, e))?;
        // A replica taking over a wake may find it running already.
        if !latest.running() {
            self.mutate(RESTART, "deploymentRestart", &latest.id)
                .await
                .map_err(|e| failed(step, e))?;
            loop {
                tokio::time::sleep(self.config.poll_interval).await;
                let d = self
                    .latest(service, environment)
                    .await
                    .map_err(|e| failed(step, e))?;
                if d.running() {
                    break;
                }
                if d.failed() {
                    return Err(failed(
                        step,
                        RailwayComputeError::Failed {
                            id: d.id,
                            status: d.status,
                        },
                    ));
                }
                if started.elapsed() > limit {
                    return Err(timed_out());
                }
            }
        }
        let upstream = &org.upstream;
        while !local::probe_at(&upstream.host, upstream.port).await {
            if started.elapsed() > limit {
                return Err(timed_out());
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        Ok(())
    }

    pub async fn status(&self, org: &Organization) -> Result<DriverStatus, DriverError> {
        let (service, environment) = ids(org)?;
        let latest = self
            .latest(service, environment)
            .await
            .map_err(|e| failed("status", e))?;
        Ok(if latest.running() {
            DriverStatus::Running
        } else {
            DriverStatus::Stopped
        })
    }

    async fn latest(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Deployment, RailwayComputeError> {
        let variables = json!({
            "input": { "serviceId": service, "environmentId": environment },
            "first": 1,
        });
        let body = self.post(DEPLOYMENTS, variables).await?;
        parse_latest(&body)?.ok_or_else(|| RailwayComputeError::NoDeployment {
            service: service.to_owned(),
            environment: environment.to_owned(),
        })
    }

    async fn mutate(
        &self,
        query: &str,
        field: &'static str,
        id: &str,
    ) -> Result<(), RailwayComputeError> {
        let body = self.post(query, json!({ "id": id })).await?;
        parse_mutation(&body, field)
    }

    /// One GraphQL request; the body of a 200 answer.
    async fn post(&self, query: &str, variables: Value) -> Result<Value, RailwayComputeError> {
        if self.config.token.is_empty() {
            return Err(RailwayComputeError::NotConfigured);
        }
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.config.token.expose())
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| RailwayComputeError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return Err(RailwayComputeError::Unauthorized(status)),
            429 => return Err(RailwayComputeError::RateLimited),
            _ => return Err(RailwayComputeError::Http(status)),
        }
        response
            .json()
            .await
            .map_err(|e| RailwayComputeError::Malformed(e.without_url().to_string()))
    }
}

fn ids(org: &Organization) -> Result<(&str, &str), DriverError> {
    match &org.compute.spec {
        ComputeSpec::Railway {
            service_id,
            environment_id,
        } => Ok((service_id, environment_id)),
        other => Err(DriverError::Unsupported(other.driver_name())),
    }
}

fn failed(step: &'static str, e: RailwayComputeError) -> DriverError {
    DriverError::Failed {
        step,
        detail: e.to_string(),
    }
}

/// A GraphQL `errors` array, joined; `None` when there is none.
fn graphql_errors(body: &Value) -> Option<RailwayComputeError> {
    let errors = body.get("errors")?.as_array()?;
    if errors.is_empty() {
        return None;
    }
    let messages: Vec<&str> = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap_or("(no message)"))
        .collect();
    Some(RailwayComputeError::GraphQl(messages.join("; ")))
}

/// Reads the `deployments` answer: the first edge's node, if any.
pub fn parse_latest(body: &Value) -> Result<Option<Deployment>, RailwayComputeError> {
    if let Some(e) = graphql_errors(body) {
        return Err(e);
    }
    let edges = body["data"]["deployments"]["edges"]
        .as_array()
        .ok_or_else(|| RailwayComputeError::Malformed("no data.deployments.edges list".into()))?;
    let Some(edge) = edges.first() else {
        return Ok(None);
    };
    let node = &edge["node"];
    let field = |name: &str| {
        node[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| RailwayComputeError::Malformed(format!("a deployment without {name}")))
    };
    Ok(Some(Deployment {
        id: field("id")?,
        status: field("status")?,
        stopped: node["deploymentStopped"].as_bool().unwrap_or(false),
    }))
}

/// Reads a `Boolean` mutation's answer.
pub fn parse_mutation(body: &Value, field: &'static str) -> Result<(), RailwayComputeError> {
    if let Some(e) = graphql_errors(body) {
        return Err(e);
    }
    match body["data"][field].as_bool() {
        Some(true) => Ok(()),
        Some(false) => Err(RailwayComputeError::Refused(field)),
        None => Err(RailwayComputeError::Malformed(format!(
            "no boolean data.{field}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/railway/compute/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_recorded_shapes_read_as_deployments_and_answers() {
        let running = parse_latest(&fixture("deployments_success.json"))
            .unwrap()
            .unwrap();
        assert_eq!(running.status, "SUCCESS");
        assert!(running.running());
        let stopped = parse_latest(&fixture("deployments_stopped.json"))
            .unwrap()
            .unwrap();
        assert!(stopped.stopped && !stopped.running());
        let starting = parse_latest(&fixture("deployments_deploying.json"))
            .unwrap()
            .unwrap();
        assert!(!starting.running() && !starting.failed());
        let crashed = parse_latest(&fixture("deployments_failed.json"))
            .unwrap()
            .unwrap();
        assert!(crashed.failed());
        assert_eq!(parse_latest(&fixture("deployments_empty.json")), Ok(None));
        assert_eq!(
            parse_mutation(&fixture("deployment_stop.json"), "deploymentStop"),
            Ok(())
        );
        assert_eq!(
            parse_mutation(&fixture("deployment_restart.json"), "deploymentRestart"),
            Ok(())
        );
        assert!(matches!(
            parse_mutation(&fixture("errors.json"), "deploymentRestart"),
            Err(RailwayComputeError::GraphQl(m)) if m == "Not Authorized"
        ));
        assert!(matches!(
            parse_latest(&fixture("errors.json")),
            Err(RailwayComputeError::GraphQl(_))
        ));
        assert_eq!(
            parse_mutation(
                &json!({"data": {"deploymentStop": false}}),
                "deploymentStop"
            ),
            Err(RailwayComputeError::Refused("deploymentStop"))
        );
        assert!(matches!(
            parse_latest(&json!({"data": {"deployments": {"edges": [{"node": {"id": 1}}]}}})),
            Err(RailwayComputeError::Malformed(_))
        ));
        assert!(matches!(
            parse_latest(&json!({"data": null})),
            Err(RailwayComputeError::Malformed(_))
        ));
    }
}
