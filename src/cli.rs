//! Command-line interface: `serve` (the default), `configcheck` and the
//! operator's `org`, `billing` and `usage` commands.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "dynabase", version, about = "Dynabase tier gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform (the default command).
    Serve {
        /// Development mode: with no admin token configured, generate one for
        /// this run and print it.
        #[arg(long)]
        dev: bool,
    },
    /// Load the configuration, print every problem, exit non-zero if any.
    Configcheck,
    /// Manage organizations directly in the configured store.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Bill a closed period, or preview what it would charge.
    Billing {
        #[command(subcommand)]
        command: BillingCommand,
    },
    /// Compare a month's estimated usage with Railway's figures (its API,
    /// or the bill given), store and print the calibration.
    Calibrate {
        #[arg(long)]
        period: String,
        /// The month's Railway bill in USD (the manual path).
        #[arg(long)]
        bill_usd: Option<String>,
    },
    /// Usage bookkeeping.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Every organization's charge for the period, as JSON; writes nothing.
    Preview {
        #[arg(long)]
        period: String,
    },
    /// Bill the period: one billing record per organization, pushed to
    /// Stripe (STRIPE_API_KEY). Idempotent: run it as often as you like.
    Run {
        #[arg(long)]
        period: String,
        /// The time to run at, in Unix milliseconds (default: now).
        #[arg(long)]
        now: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Recompute each organization's period total from its usage records
    /// and report any difference (exit status 1 if there is one).
    Reconcile {
        #[arg(long)]
        period: String,
        /// Only this organization.
        #[arg(long)]
        org: Option<String>,
        /// Replace differing totals with the recomputed ones. Run it while
        /// no replica writes usage for the period.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "free")]
        tier: String,
        /// The tenant's PostgreSQL, host:port.
        #[arg(long)]
        upstream: String,
    },
    /// List organizations.
    List,
    /// Show one organization as JSON.
    Show { id: String },
    /// Change an organization's tier (recorded in the audit log).
    SetTier {
        id: String,
        tier: String,
        #[arg(long)]
        reason: Option<String>,
    },
}
