//! Turning failures inside handlers into a supervised restart.
//!
//! actix's `Supervisor` restarts an actor that *stops*, not one whose handler
//! panics (its mailbox just closes and every later send fails). So handlers run
//! fallible or possibly-panicking work through [`guarded`], which converts an
//! `Err` or a panic into `ctx.stop()`. The message in flight is lost; senders
//! that must not lose work retry (every store write is idempotent).

use std::panic::{catch_unwind, AssertUnwindSafe};

use actix::ActorContext;

/// Runs `work`; on `Err` or panic logs it, stops the actor (so its supervisor
/// restarts it) and returns `None`.
pub fn guarded<C, T, E>(
    actor: &'static str,
    ctx: &mut C,
    work: impl FnOnce() -> Result<T, E>,
) -> Option<T>
where
    C: ActorContext,
    E: std::fmt::Display,
{
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::error!(actor, %error, "handler failed; restarting actor");
            ctx.stop();
            None
        }
        Err(_) => {
            tracing::error!(actor, "handler panicked; restarting actor");
            ctx.stop();
            None
        }
    }
}

/// Implements `Actor`, `Supervised`, `Handler<Ping>` and `Handler<InjectFault>`
/// for a struct with a `restarts: u32` field: the part every supervised
/// service actor shares.
#[macro_export]
macro_rules! supervised_actor {
    ($actor:ty, $name:literal) => {
        impl ::actix::Actor for $actor {
            type Context = ::actix::Context<Self>;
            fn started(&mut self, _ctx: &mut Self::Context) {
                ::tracing::debug!(actor = $name, restarts = self.restarts, "started");
            }
        }

        impl ::actix::Supervised for $actor {
            fn restarting(&mut self, _ctx: &mut Self::Context) {
                self.restarts += 1;
                ::tracing::warn!(actor = $name, restarts = self.restarts, "restarting");
            }
        }

        impl ::actix::Handler<$crate::ping::Ping> for $actor {
            type Result = ::actix::MessageResult<$crate::ping::Ping>;
            fn handle(&mut self, _: $crate::ping::Ping, _: &mut Self::Context) -> Self::Result {
                ::actix::MessageResult($crate::ping::Pong {
                    actor: $name,
                    restarts: self.restarts,
                })
            }
        }

        impl ::actix::Handler<$crate::ping::InjectFault> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::ping::InjectFault, ctx: &mut Self::Context) {
                $crate::supervision::guarded($name, ctx, || -> Result<(), &str> {
                    panic!("injected fault")
                });
            }
        }
    };
}
