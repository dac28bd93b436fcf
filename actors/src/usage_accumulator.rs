//! `UsageAccumulator`: receives the query cycles the proxy observes, in
//! batches, and keeps per-organization cycle counts.

use std::collections::HashMap;

use actix::{Handler, Message, MessageResult};

use crate::domain::{cycle::CycleEvent, org_id::OrgId};

/// Cycles observed by the proxy since the last batch.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CycleBatch(pub Vec<CycleEvent>);

/// Reads the number of cycles received for one organization.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct CyclesObserved(pub OrgId);

/// The usage_accumulator actor.
#[derive(Debug, Default)]
pub struct UsageAccumulator {
    restarts: u32,
    cycles: HashMap<OrgId, u64>,
}

crate::supervised_actor!(UsageAccumulator, "usage_accumulator");

impl Handler<CycleBatch> for UsageAccumulator {
    type Result = ();
    fn handle(&mut self, batch: CycleBatch, _: &mut Self::Context) {
        for event in batch.0 {
            *self.cycles.entry(event.session.org.clone()).or_default() += 1;
        }
    }
}

impl Handler<CyclesObserved> for UsageAccumulator {
    type Result = MessageResult<CyclesObserved>;
    fn handle(&mut self, msg: CyclesObserved, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.cycles.get(&msg.0).copied().unwrap_or(0))
    }
}
