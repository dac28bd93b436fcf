//! `Ping`: the liveness message every supervised actor answers.

use actix::Message;

/// Asks an actor whether it is alive.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Pong")]
pub struct Ping;

/// The answer to [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    pub actor: &'static str,
    /// How many times the supervisor has restarted this actor.
    pub restarts: u32,
}

/// Makes the actor fail inside a handler, as a bug would. Tests use it to show
/// that supervision brings the actor back; it has no other effect.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct InjectFault;
