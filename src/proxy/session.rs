//! One client connection from accept to close: the opening handshake,
//! identification, admission by the tenant actor, upstream authentication
//! and the relay. Composition only: protocol lives in `codec`/`handshake`,
//! policy in the tenant actor.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use actix::Addr;
use dynabase_actors::{
    domain::cycle::SessionLabels,
    scale_to_zero::ScaleToZero,
    shared_limits::SharedLimits,
    tenant::{Admission, Admit, ConnectionActor, Release},
    OrgId,
};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    client_error::ClientError,
    codec::startup::StartupMessage,
    handshake::{self, HandshakeError, Opening},
    identify::{identify, Identity},
    relay::RelayObserver,
    sessions::{Registered, SessionState},
    stream::ClientStream,
    upstream::{self, AuthError},
    ProxyContext,
};

/// Parameters the proxy sets itself; a client's own values are replaced.
const TIER_PARAMS: &[&str] = &["statement_timeout", "work_mem", "temp_buffers"];

/// A connection slot taken from the tenant actor, returned on drop — on
/// every way a session ends, including a panic of its task.
struct Slot {
    tenant: Addr<ConnectionActor>,
    tier: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tenant.do_send(Release);
    }
}

/// The org-wide lease (several replicas), held with the local slot and
/// returned with it.
struct Lease {
    slot: Slot,
    shared: Option<(Arc<dyn SharedLimits>, OrgId, String)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((shared, org, lease)) = &self.shared {
            shared.release_connection(org, lease);
        }
        metrics::gauge!("dynabase_proxy_active_connections", "tier" => self.slot.tier)
            .decrement(1.0);
    }
}

async fn admit(tenant: &Addr<ConnectionActor>) -> Result<Admission, ClientError> {
    match tenant.send(Admit).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(refusal)) => Err(ClientError::ConnectionLimit(refusal)),
        Err(_) => Err(ClientError::TenantServiceUnavailable),
    }
}

/// Takes the org-wide lease when limits are shared. If the shared state is
/// unreachable, the slot is taken again under the local share instead, and
/// the lease is only held here: it is registered when the shared state is
/// back, so the session counts against the org-wide limit from then on.
async fn org_wide_lease(
    ctx: &ProxyContext,
    identity: &Identity,
    admission: &Admission,
    slot: Slot,
) -> Result<Lease, ClientError> {
    let tier = slot.tier;
    metrics::gauge!("dynabase_proxy_active_connections", "tier" => tier).increment(1.0);
    let Some(shared) = &ctx.shared_limits else {
        return Ok(Lease { slot, shared: None });
    };
    static NEXT_LEASE: AtomicU64 = AtomicU64::new(0);
    let lease = format!(
        "{}:{}",
        ctx.replica_id,
        NEXT_LEASE.fetch_add(1, Ordering::Relaxed)
    );
    let held = |slot: Slot| {
        shared.hold_connection(&identity.org, &lease);
        Lease {
            slot,
            shared: Some((shared.clone(), identity.org.clone(), lease.clone())),
        }
    };
    if shared.health().degraded {
        return Ok(held(slot));
    }
    let limit = admission.limits.max_connections;
    match shared
        .acquire_connection(&identity.org, limit, &lease)
        .await
    {
        Ok(true) => Ok(Lease {
            slot,
            shared: Some((shared.clone(), identity.org.clone(), lease)),
        }),
        Ok(false) => {
            drop(Lease { slot, shared: None });
            Err(ClientError::ConnectionLimit(
                admission.org_wide_limit_reached(),
            ))
        }
        Err(e) => {
            shared.mark_degraded(&e);
            let tenant = slot.tenant.clone();
            drop(Lease { slot, shared: None });
            // Degraded now: the actor admits under this replica's share.
            admit(&tenant).await?;
            metrics::gauge!("dynabase_proxy_active_connections", "tier" => tier).increment(1.0);
            Ok(held(Slot { tenant, tier }))
        }
    }
}

pub async fn serve(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr) {
    let accepted = Instant::now();
    let _ = tcp.set_nodelay(true);
    // Boxed, like `establish` below: only while it runs.
    let opened = tokio::time::timeout(
        ctx.config.handshake_timeout,
        Box::pin(handshake::open(tcp, ctx.tls.as_ref())),
    )
    .await;
    match opened {
        Err(_) => {
            tracing::info!(%peer, "startup handshake timed out; connection dropped");
            refused("handshake_timeout");
        }
        Ok(Err(HandshakeError::Refuse(stream, error))) => refuse(stream, &error).await,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "startup handshake failed; connection dropped");
            refused("bad_handshake");
        }
        Ok(Ok(Opening::Cancel {
            stream,
            process_id,
            secret_key,
        })) => {
            ctx.cancel_keys.cancel(process_id, secret_key).await;
            drop(stream);
        }
        Ok(Ok(Opening::Session { stream, startup })) => {
            if let Err((stream, error)) = session(&ctx, stream, startup, peer, accepted).await {
                refuse(stream, &error).await;
            }
        }
    }
}

fn refused(reason: &'static str) {
    metrics::counter!("dynabase_proxy_refusals_total", "reason" => reason).increment(1);
}

async fn refuse<W: AsyncWrite + Unpin>(mut stream: W, error: &ClientError) {
    refused(error.reason());
    tracing::info!(sqlstate = error.sqlstate(), %error, "connection refused");
    let mut out = Vec::with_capacity(256);
    error.write_fatal(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// What an established session keeps. The rest of the handshake's state
/// (startup parameters, the admission, the upstream parameters) is dropped
/// before the relay starts, so an idle session holds only this and its relay.
struct Established {
    stream: ClientStream,
    upstream: upstream::Authenticated,
    observer: RelayObserver,
    lease: Lease,
    registered: Registered,
}

/// The session proper; a refusal comes back with the stream to send it on.
async fn session(
    ctx: &ProxyContext,
    stream: ClientStream,
    startup: StartupMessage,
    peer: SocketAddr,
    accepted: Instant,
) -> Result<(), (ClientStream, ClientError)> {
    // Boxed: a task is as large as its largest state, and establishing is
    // over once the relay starts; the relay is boxed by `run` for the same
    // reason. This future then keeps little more than `Established`.
    let Some(Established {
        stream,
        upstream,
        observer,
        lease,
        registered,
    }) = Box::pin(establish(ctx, stream, startup, peer, accepted)).await?
    else {
        return Ok(());
    };
    let labels = observer.labels.clone();
    let end = super::session_relay::run(stream, upstream.server, observer, upstream.status).await;
    tracing::debug!(org = %labels.org, ?end, "session ended");
    drop(upstream.key);
    drop(lease);
    drop(registered);
    Ok(())
}

/// From the StartupMessage to an authenticated upstream. `Ok(None)`: the
/// session already ended and the client has been told (or is gone).
async fn establish(
    ctx: &ProxyContext,
    mut stream: ClientStream,
    startup: StartupMessage,
    peer: SocketAddr,
    accepted: Instant,
) -> Result<Option<Established>, (ClientStream, ClientError)> {
    if ctx.config.require_tls && !stream.is_tls() {
        return Err((stream, ClientError::TlsRequired));
    }
    let user = startup.param("user").unwrap_or_default();
    let identity = match identify(user, stream.sni(), ctx.config.sni_domain.as_deref()) {
        Ok(id) => id,
        Err(e) => return Err((stream, e)),
    };
    let tenant = match ctx.tenants.tenant(&identity.org).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err((
                stream,
                ClientError::UnknownOrganization(identity.org.to_string()),
            ))
        }
        Err(e) => {
            tracing::error!(org = %identity.org, error = %e, "tenant lookup failed");
            return Err((stream, ClientError::TenantServiceUnavailable));
        }
    };
    let admission = match admit(&tenant).await {
        Ok(a) => a,
        Err(e) => return Err((stream, e)),
    };
    let tier = admission.organization.tier.as_str();
    let slot = Slot { tenant, tier };
    // With several replicas the org-wide count lives in Redis.
    let lease = match org_wide_lease(ctx, &identity, &admission, slot).await {
        Ok(lease) => lease,
        Err(e) => return Err((stream, e)),
    };
    metrics::counter!("dynabase_proxy_admissions_total", "tier" => tier).increment(1);
    // Admitted (slot held) before waiting, so a crowd beyond the tier's
    // limit is refused at once, not after the wake.
    let start = match wake_if_needed(ctx, &admission).await {
        Ok(start) => start,
        Err(e) => return Err((stream, e)),
    };

    let database = match startup.param("database") {
        // libpq defaults the database to the user name, here `<role>.<org>`.
        Some(db) if !db.is_empty() && db != user => db.to_owned(),
        _ => identity.role.clone(),
    };
    let registered = ctx.sessions.register(
        identity.org.clone(),
        admission.organization.tier,
        peer,
        database.clone(),
        identity.role.clone(),
    );
    if startup.minor_version > 0 || startup.params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        let unsupported: Vec<&str> = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        let mut out = Vec::new();
        super::codec::backend::negotiate_protocol_version(&mut out, &unsupported);
        if stream.write_all(&out).await.is_err() {
            return Ok(None);
        }
    }

    let params = upstream_params(&startup, &identity, &admission, &database);
    let org_name = identity.org.to_string();
    let authenticating = tokio::time::timeout(
        ctx.config.auth_timeout,
        upstream::authenticate(
            &mut stream,
            &admission.organization.upstream,
            &params,
            identity.role != user,
            ctx.config.connect_timeout,
            |target| ctx.cancel_keys.issue(target),
            || ClientError::UpstreamUnavailable {
                org: org_name.clone(),
                database: database.clone(),
            },
        ),
    );
    // An operator (or shutdown) may end the session while it authenticates.
    let authenticated = tokio::select! {
        r = authenticating => Some(r),
        () = registered.info.terminated() => None,
    };
    let Some(authenticated) = authenticated else {
        return Err((stream, ClientError::AdminShutdown));
    };
    let upstream = match authenticated {
        Err(_) => return Err((stream, ClientError::AuthTimeout)),
        Ok(Err(AuthError::Client(e))) => return Err((stream, e)),
        Ok(Err(AuthError::Relayed)) => {
            refused("upstream_auth");
            return Ok(None);
        }
        Ok(Err(e)) => {
            tracing::info!(org = %identity.org, error = %e, "session ended during authentication");
            return Ok(None);
        }
        Ok(Ok(a)) => a,
    };
    metrics::histogram!("dynabase_proxy_handshake_seconds", "tier" => tier, "start" => start)
        .record(accepted.elapsed().as_secs_f64());
    registered.info.set_state(SessionState::Idle);

    let observer = RelayObserver {
        info: registered.info.clone(),
        labels: Arc::new(SessionLabels {
            org: identity.org.clone(),
            database,
            work_mem_mb: megabytes(&admission.limits.session.work_mem),
        }),
        sink: ctx.cycles.clone(),
        gate: admission.gate.clone(),
        max_queue_delay: ctx.config.max_queue_delay,
        tier: admission.organization.tier,
        delayed_total: metrics::counter!("dynabase_rate_limit_delayed_total", "tier" => tier),
        refused_total: metrics::counter!("dynabase_rate_limit_refused_total", "tier" => tier),
        decision_seconds: metrics::histogram!("dynabase_rate_limit_decision_seconds"),
    };
    Ok(Some(Established {
        stream,
        upstream,
        observer,
        lease,
        registered,
    }))
}

/// Holds the connection while a suspended database wakes (one wake for
/// every connection that waits). `cold` when it had to wait, `warm` when
/// the database was up.
async fn wake_if_needed(
    ctx: &ProxyContext,
    admission: &Admission,
) -> Result<&'static str, ClientError> {
    let org = &admission.organization;
    let tier = org.tier.as_str();
    if !ScaleToZero::needs_wake(org) {
        metrics::counter!("dynabase_scale_connects_total", "tier" => tier, "start" => "warm")
            .increment(1);
        return Ok("warm");
    }
    metrics::counter!("dynabase_scale_connects_total", "tier" => tier, "start" => "cold")
        .increment(1);
    let waited = Instant::now();
    let deadline = ctx.scale.config().wake_deadline;
    let result = tokio::time::timeout(deadline, ctx.scale.ensure_awake(&org.id)).await;
    let outcome = match &result {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "error",
        Err(_) => "deadline",
    };
    metrics::histogram!("dynabase_scale_client_wait_seconds", "tier" => tier, "outcome" => outcome)
        .record(waited.elapsed().as_secs_f64());
    let waited_ms = u64::try_from(waited.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(Ok(_)) => Ok("cold"),
        Ok(Err(e)) => {
            tracing::warn!(org = %org.id, error = %e, waited_ms, "wake failed; connection refused with 57P03");
            Err(ClientError::WakeFailed {
                org: org.id.to_string(),
            })
        }
        Err(_) => Err(ClientError::DatabaseStarting {
            org: org.id.to_string(),
            waited_ms,
        }),
    }
}

/// The StartupMessage sent upstream: the client's parameters with the role
/// in place of `<role>.<org>`, the tier's session settings, and an
/// `application_name` naming org, tier and the client's own name.
fn upstream_params(
    startup: &StartupMessage,
    identity: &Identity,
    admission: &Admission,
    database: &str,
) -> Vec<(String, String)> {
    let session = &admission.limits.session;
    let client_app = startup.param("application_name").unwrap_or_default();
    let mut params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "application_name")
                && !TIER_PARAMS.contains(&k.as_str())
                && !k.starts_with("_pq_.")
        })
        .cloned()
        .collect();
    params.extend([
        ("user".to_owned(), identity.role.clone()),
        ("database".to_owned(), database.to_owned()),
        (
            "application_name".to_owned(),
            format!(
                "{}/{}/{}",
                identity.org,
                admission.organization.tier.as_str(),
                client_app
            ),
        ),
        (
            "statement_timeout".to_owned(),
            session.statement_timeout.clone(),
        ),
        ("work_mem".to_owned(), session.work_mem.clone()),
        ("temp_buffers".to_owned(), session.temp_buffers.clone()),
    ]);
    params
}

/// "64MB" → 64, "1GB" → 1024, "512kB" → 0 (rounded down), bare numbers are kB.
fn megabytes(setting: &str) -> u32 {
    let digits = setting.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = setting[..digits].parse().unwrap_or(0);
    let mb = match setting[digits..].trim().to_ascii_lowercase().as_str() {
        "gb" => n * 1024,
        "mb" => n,
        "tb" => n * 1024 * 1024,
        _ => n / 1024,
    };
    u32::try_from(mb).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::megabytes;

    #[test]
    fn work_mem_settings_in_megabytes() {
        assert_eq!(megabytes("4MB"), 4);
        assert_eq!(megabytes("1GB"), 1024);
        assert_eq!(megabytes("2048"), 2);
        assert_eq!(megabytes("junk"), 0);
    }
}
