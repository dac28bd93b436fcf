//! Billing: a closed period's usage becomes an overage charge on the
//! organization's payment-provider customer, exactly once.

pub mod charge;
pub mod provider;
