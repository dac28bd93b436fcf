//! Implementations of [`dynabase_actors::Store`].
//!
//! - [`MongoStore`]: MongoDB (or a MongoDB-wire server such as FerretDB), the
//!   source of truth in production.
//! - [`EmbeddedStore`]: a single redb file, for when no MongoDB is configured.
//!
//! Both pass the same conformance suite, `tests/store_conformance.rs`, so the
//! actors can rely on one behaviour: keyed writes report
//! [`Write::AlreadyApplied`](dynabase_actors::domain::records::Write) on retry,
//! and lists come back in a fixed order.

pub mod embedded;
mod embedded_usage;
pub mod mongo;
mod mongo_usage;

pub use embedded::{EmbeddedStore, EmbeddedStoreError};
pub use mongo::{MongoStore, MongoStoreError};
