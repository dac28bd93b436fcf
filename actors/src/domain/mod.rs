//! Domain types shared by the actors, the store port and the adapters.

pub mod billing;
pub mod billing_record;
pub mod calendar;
pub mod catalog;
pub mod compute;
pub mod cycle;
pub mod jobs;
pub mod org_id;
pub mod organization;
pub mod period_total;
pub mod records;
pub mod spend;
pub mod tier;
pub mod time;
pub mod usage;
pub mod usage_report;
