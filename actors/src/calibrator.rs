//! `Calibrator`: Compares estimated usage with the real infrastructure bill each month (today it starts, answers Ping and is supervised).

/// The calibrator actor.
#[derive(Debug, Default)]
pub struct Calibrator {
    restarts: u32,
}

crate::supervised_actor!(Calibrator, "calibrator");
