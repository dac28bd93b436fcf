//! `dynabase org …`: organization commands run directly against the
//! configured store (MongoDB, or the embedded store when no server holds it).

use dynabase_actors::{tier_cache::TierCache, OrgId, Tier, UnixMillis, Upstream};

use crate::{
    adapters::redis_tier_cache::RedisTierCache,
    app::{open_store, AppError},
    cli::OrgCommand,
    org_admin::{self, CreateOrg, UpdateOrg},
    settings::Settings,
};

#[derive(Debug, thiserror::Error)]
pub enum OrgCliError {
    #[error("{0}")]
    BadArgument(String),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Store(#[from] dynabase_actors::StoreError),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn arg<T, E: std::fmt::Display>(name: &str, r: Result<T, E>) -> Result<T, OrgCliError> {
    r.map_err(|e| OrgCliError::BadArgument(format!("{name}: {e}")))
}

/// Runs one `org` command and returns what to print.
pub async fn run(settings: &Settings, command: OrgCommand) -> Result<String, OrgCliError> {
    let (store, _) = open_store(&settings.store).await?;
    let now = UnixMillis::now();
    match command {
        OrgCommand::Create {
            id,
            name,
            tier,
            upstream,
        } => {
            let req = CreateOrg {
                id: arg("id", OrgId::parse(&id))?,
                name,
                tier: arg("tier", tier.parse::<Tier>())?,
                upstream: arg("upstream", Upstream::parse(&upstream))?,
                stripe_customer_id: None,
                stripe_subscription_id: None,
            };
            let org = org_admin::create(store.as_ref(), req, now).await?;
            Ok(serde_json::to_string_pretty(&org)?)
        }
        OrgCommand::List => {
            let lines: Vec<String> = store
                .list_orgs()
                .await?
                .into_iter()
                .map(|o| format!("{}\t{}\t{}\t{}", o.id, o.tier, o.upstream, o.name))
                .collect();
            Ok(lines.join("\n"))
        }
        OrgCommand::Show { id } => {
            let id = arg("id", OrgId::parse(&id))?;
            let org = store
                .get_org(&id)
                .await?
                .ok_or(dynabase_actors::StoreError::NotFound(id))?;
            Ok(serde_json::to_string_pretty(&org)?)
        }
        OrgCommand::SetTier { id, tier, reason } => {
            let id = arg("id", OrgId::parse(&id))?;
            let change = UpdateOrg {
                tier: Some(arg("tier", tier.parse::<Tier>())?),
                reason,
                ..UpdateOrg::default()
            };
            let org = org_admin::update(store.as_ref(), &id, change, "cli", now).await?;
            let announced = announce(settings, &org.id).await;
            Ok(format!("{} is now on tier {}{announced}", org.id, org.tier))
        }
    }
}

/// Tells running replicas (through Redis, when configured) that `id`
/// changed; returns a note for the output when that was not possible.
async fn announce(settings: &Settings, id: &OrgId) -> String {
    let Some(redis) = &settings.redis else {
        return String::new();
    };
    let sent = match redis::Client::open(redis.url.expose()) {
        Ok(client) => {
            match RedisTierCache::new(&client, &redis.key_prefix, settings.tier_cache.ttl) {
                Ok(cache) => cache.invalidate(id).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => String::new(),
        Err(e) => format!(
            " (running replicas could not be told: {e}; they pick the change up within {})",
            humantime::format_duration(
                settings.tier_cache.refresh_interval + settings.tier_cache.ttl
            )
        ),
    }
}
