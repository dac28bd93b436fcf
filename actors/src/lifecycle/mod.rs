//! The tier lifecycle: how organizations move between tiers.
//!
//! - [`policy`]: the rules (upgrades now, downgrades after a grace period,
//!   payment failures to FREE after theirs), as pure functions of time.
//! - [`changer`]: the one path that changes an organization's tier — store
//!   first (compare-and-set), then audit, actors, cache invalidation on every
//!   replica, notifications.
//! - [`billing`]: what billing-provider events do.
//! - [`notifier`]: notification records and outbound webhooks, sent through
//!   the [`sender`] port.
//! - [`scheduler`]: the actor whose `Tick { now }` applies what is due.

pub mod billing;
pub mod changer;
pub mod notifier;
pub mod policy;
pub mod scheduler;
pub mod sender;

pub use changer::{BillingLink, ChangeError, ChangeRequest, Outcome, TierChanger};
pub use notifier::{DeliveryReport, NotificationKind, Notifier, OutboundNotification};
pub use policy::Mode;
pub use scheduler::{LifecycleScheduler, Tick, TickReport};
pub use sender::{DeliveryError, NotificationSender};
