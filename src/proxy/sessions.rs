//! `SessionTable`: the live client sessions, for the admin API and for
//! ending them (one by an operator, or all at shutdown).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use atomic_waker::AtomicWaker;

use dashmap::DashMap;
use dynabase_actors::{OrgId, Tier, UnixMillis};
use serde::Serialize;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Authenticating,
    Idle,
    Active,
}

impl SessionState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => SessionState::Authenticating,
            1 => SessionState::Idle,
            _ => SessionState::Active,
        }
    }
}

/// One live session, shared between its task and the table.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub org: OrgId,
    pub tier: Tier,
    pub client_addr: SocketAddr,
    pub database: String,
    pub role: String,
    pub started_at: UnixMillis,
    cycles: AtomicU64,
    state: AtomicU8,
    /// Set once by an operator or shutdown; the relay checks it on every
    /// wake, so it is a flag and a waker rather than a `Notify` (whose waiter
    /// list takes a lock on each poll).
    terminate: AtomicBool,
    terminate_waker: AtomicWaker,
}

impl SessionInfo {
    pub fn add_cycle(&self) {
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: SessionState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Resolves when an operator or shutdown asks this session to end
    /// (at once if that already happened).
    pub async fn terminated(&self) {
        std::future::poll_fn(|cx| self.poll_terminated(cx)).await;
    }

    /// `Ready` once the session has been asked to end.
    pub fn poll_terminated(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_terminated() {
            return Poll::Ready(());
        }
        self.terminate_waker.register(cx.waker());
        if self.is_terminated() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the session has been asked to end (no waker registered).
    pub fn is_terminated(&self) -> bool {
        self.terminate.load(Ordering::Acquire)
    }

    fn ask_to_end(&self) {
        self.terminate.store(true, Ordering::Release);
        self.terminate_waker.wake();
    }
}

/// What the admin API shows of a session.
/// One proxy session as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: u64,
    #[schema(value_type = String)]
    pub org: OrgId,
    #[schema(value_type = crate::http::api_types::TierDoc)]
    pub tier: Tier,
    pub client_addr: String,
    pub database: String,
    pub role: String,
    /// Unix milliseconds.
    #[schema(value_type = i64)]
    pub started_at: UnixMillis,
    pub query_cycles: u64,
    pub state: SessionState,
}

#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: DashMap<u64, Arc<SessionInfo>>,
    next_id: AtomicU64,
}

/// Removes its session from the table when dropped, however the session ends.
#[derive(Debug)]
pub struct Registered {
    table: Arc<SessionTable>,
    pub info: Arc<SessionInfo>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.sessions.remove(&self.info.id);
    }
}

impl SessionTable {
    pub fn register(
        self: &Arc<Self>,
        org: OrgId,
        tier: Tier,
        client_addr: SocketAddr,
        database: String,
        role: String,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(SessionInfo {
            id,
            org,
            tier,
            client_addr,
            database,
            role,
            started_at: UnixMillis::now(),
            cycles: AtomicU64::new(0),
            state: AtomicU8::new(SessionState::Authenticating as u8),
            terminate: AtomicBool::new(false),
            terminate_waker: AtomicWaker::new(),
        });
        self.sessions.insert(id, info.clone());
        Registered {
            table: self.clone(),
            info,
        }
    }

    pub fn for_org(&self, org: &OrgId) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = self
            .sessions
            .iter()
            .filter(|s| &s.org == org)
            .map(|s| SessionView {
                id: s.id,
                org: s.org.clone(),
                tier: s.tier,
                client_addr: s.client_addr.to_string(),
                database: s.database.clone(),
                role: s.role.clone(),
                started_at: s.started_at,
                query_cycles: s.cycles.load(Ordering::Relaxed),
                state: SessionState::from_u8(s.state.load(Ordering::Relaxed)),
            })
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// The organizations with at least one session here now.
    pub fn orgs(&self) -> std::collections::HashSet<OrgId> {
        self.sessions.iter().map(|s| s.org.clone()).collect()
    }

    /// Asks one session to end; false if there is no such session.
    pub fn terminate(&self, id: u64) -> bool {
        match self.sessions.get(&id) {
            Some(s) => {
                s.ask_to_end();
                true
            }
            None => false,
        }
    }

    pub fn terminate_all(&self) {
        for s in self.sessions.iter() {
            s.ask_to_end();
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
