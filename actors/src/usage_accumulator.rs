//! `UsageAccumulator`: Turns query cycles into vCPU-hours and GB-hours and writes them in batches (today it starts, answers Ping and is supervised).

/// The usage_accumulator actor.
#[derive(Debug, Default)]
pub struct UsageAccumulator {
    restarts: u32,
}

crate::supervised_actor!(UsageAccumulator, "usage_accumulator");
