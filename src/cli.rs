//! Command-line interface: `serve` (the default), `configcheck` and the
//! operator's `org` commands.

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
