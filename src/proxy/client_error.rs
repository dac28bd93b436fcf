//! `ClientError`: the allow-list of errors the proxy itself sends to
//! clients, each with its SQLSTATE. Anything else a client sees comes from
//! PostgreSQL unchanged.

use dynabase_actors::tenant::{ConnectionRefusal, RateRefusal};

use super::codec::backend::{self, ErrorFields, Severity};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("unknown organization \"{0}\"")]
    UnknownOrganization(String),
    #[error("no organization in the connection: connect as user <role>.<organization>")]
    NoOrganization,
    #[error("{0}")]
    ConnectionLimit(ConnectionRefusal),
    #[error("unsupported frontend protocol {major}.{minor}: this proxy speaks 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("TLS is required: connect with sslmode=require")]
    TlsRequired,
    #[error("cannot reach database \"{database}\" of organization {org}")]
    UpstreamUnavailable { org: String, database: String },
    #[error("authentication did not complete in time")]
    AuthTimeout,
    #[error("unsupported authentication method requested by the server")]
    UnsupportedAuth,
    #[error("MD5 password authentication cannot pass through a user name of the form <role>.<organization>")]
    Md5WithOrgInUserName,
    #[error("terminating connection due to administrator command")]
    AdminShutdown,
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("the tenant service is unavailable; try again shortly")]
    TenantServiceUnavailable,
    /// Scale-to-zero: the wake did not finish within the wake deadline
    /// (it goes on; a retry finds it done or still running).
    #[error("the database of organization {org} is starting up after being idle ({waited_ms} ms so far)")]
    DatabaseStarting { org: String, waited_ms: u64 },
    /// Scale-to-zero: the driver failed; the reason is logged and kept on
    /// the organization record for the operator, never sent to clients.
    #[error("the database of organization {org} could not be started")]
    WakeFailed { org: String },
}

impl ClientError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientError::UnknownOrganization(_) | ClientError::NoOrganization => "28000",
            ClientError::Md5WithOrgInUserName => "28000",
            ClientError::TlsRequired => "28000",
            ClientError::ConnectionLimit(ConnectionRefusal::ForcedUpgrade { .. }) => "53400",
            ClientError::ConnectionLimit(_) => "53300",
            ClientError::UnsupportedProtocol { .. } | ClientError::ProtocolViolation(_) => "08P01",
            ClientError::UnsupportedAuth => "08P01",
            ClientError::UpstreamUnavailable { .. } | ClientError::AuthTimeout => "08006",
            ClientError::AdminShutdown => "57P01",
            ClientError::ShuttingDown | ClientError::TenantServiceUnavailable => "57P03",
            ClientError::DatabaseStarting { .. } | ClientError::WakeFailed { .. } => "57P03",
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ClientError::ConnectionLimit(ConnectionRefusal::LimitReached { next, .. }) => {
                Some(match next {
                    Some((tier, limit)) => format!(
                        "Close idle connections or use a connection pool, or upgrade to tier {tier} for up to {limit} connections."
                    ),
                    None => "Close idle connections or use a connection pool.".to_owned(),
                })
            }
            ClientError::ConnectionLimit(ConnectionRefusal::ForcedUpgrade {
                upgrade_url, ..
            }) => Some(format!(
                "Upgrade to tier STARTER or above to connect again this period: {upgrade_url}"
            )),
            ClientError::Md5WithOrgInUserName => Some(
                "The MD5 hash covers the user name, so it cannot survive the proxy rewriting it. Use SCRAM-SHA-256 for this role (recommended), or connect over TLS with the host name <organization>.<domain> and the plain role name.".to_owned(),
            ),
            ClientError::DatabaseStarting { .. } => Some(
                "The database was suspended while idle and is being woken; retry the connection in a moment.".to_owned(),
            ),
            ClientError::WakeFailed { .. } => Some(
                "Retry the connection; the next attempt starts the database again. If this persists, contact your operator.".to_owned(),
            ),
            ClientError::NoOrganization => {
                Some("For example: psql \"host=... user=app.acme dbname=app\"".to_owned())
            }
            _ => None,
        }
    }

    /// Appends this error as a FATAL ErrorResponse.
    pub fn write_fatal(&self, out: &mut Vec<u8>) {
        let message = self.to_string();
        let hint = self.hint();
        backend::error_response(
            out,
            &ErrorFields {
                severity: Severity::Fatal,
                code: self.sqlstate(),
                message: &message,
                detail: None,
                hint: hint.as_deref(),
            },
        );
    }

    /// Metric label for refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientError::UnknownOrganization(_) => "unknown_org",
            ClientError::NoOrganization => "no_org",
            ClientError::ConnectionLimit(ConnectionRefusal::ForcedUpgrade { .. }) => {
                "forced_upgrade"
            }
            ClientError::ConnectionLimit(_) => "connection_limit",
            ClientError::UnsupportedProtocol { .. } => "unsupported_protocol",
            ClientError::TlsRequired => "tls_required",
            ClientError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ClientError::AuthTimeout => "auth_timeout",
            ClientError::UnsupportedAuth => "unsupported_auth",
            ClientError::Md5WithOrgInUserName => "md5_with_org_in_user_name",
            ClientError::AdminShutdown => "admin_shutdown",
            ClientError::ProtocolViolation(_) => "protocol_violation",
            ClientError::ShuttingDown => "shutting_down",
            ClientError::TenantServiceUnavailable => "tenant_service_unavailable",
            ClientError::DatabaseStarting { .. } => "database_starting",
            ClientError::WakeFailed { .. } => "wake_failed",
        }
    }
}

/// The ERROR 53400 a refused query cycle gets; the session stays usable.
pub fn rate_limited(refusal: &RateRefusal) -> Box<[u8]> {
    let (message, detail, hint) = match refusal.spend_cap {
        Some(cap) => (
            format!(
                "spend cap of {cap} reached for organization {} this period: query cycles are refused",
                refusal.org
            ),
            "Refused until the cap is raised or the period ends.".to_owned(),
            "Raise the spend cap (PUT /v1/spend-cap with the organization's API token, or ask your operator).".to_owned(),
        ),
        None => (
            refusal.to_string(),
            format!("Retry after {} ms.", refusal.retry_after.as_millis().max(1)),
            match refusal.next {
                Some((tier, Some(qps))) => format!("Upgrade to tier {tier} for {qps} queries/s."),
                Some((tier, None)) => format!("Upgrade to tier {tier} for unlimited queries/s."),
                None => "Spread queries over time or batch them.".to_owned(),
            },
        ),
    };
    let mut out = Vec::with_capacity(256);
    backend::error_response(
        &mut out,
        &ErrorFields {
            severity: Severity::Error,
            code: "53400",
            message: &message,
            detail: Some(&detail),
            hint: Some(&hint),
        },
    );
    out.into_boxed_slice()
}
