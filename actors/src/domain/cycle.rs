//! Query cycles as the proxy reports them to the actors.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::org_id::OrgId;

/// What kind of statement a cycle ran, for usage factors and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Ddl,
    Other,
}

impl StatementKind {
    pub const ALL: [StatementKind; 6] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Ddl,
        StatementKind::Other,
    ];

    /// Position in [`Self::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Ddl => "ddl",
            StatementKind::Other => "other",
        }
    }
}

/// Who a session belongs to; shared by all of its events.
#[derive(Debug)]
pub struct SessionLabels {
    pub org: OrgId,
    pub database: String,
    /// The tier's `work_mem` in MB, for GB-hour estimates.
    pub work_mem_mb: u32,
}

/// One finished query cycle.
#[derive(Debug, Clone)]
pub struct CycleEvent {
    pub session: Arc<SessionLabels>,
    pub kind: StatementKind,
    pub started: Instant,
    pub duration: Duration,
}
