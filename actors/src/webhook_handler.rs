//! `WebhookHandler`: Applies verified billing-provider webhooks to organizations (today it starts, answers Ping and is supervised).

/// The webhook_handler actor.
#[derive(Debug, Default)]
pub struct WebhookHandler {
    restarts: u32,
}

crate::supervised_actor!(WebhookHandler, "webhook_handler");
