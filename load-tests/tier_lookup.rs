//! Tier lookup latency per layer and the hit rate under connection churn.
//!
//! ```sh
//! scripts/services.sh start && source .services/env
//! cargo bench --bench tier_lookup
//! ```
//!
//! Against the MongoDB-wire server and Redis of `scripts/services.sh` (or
//! `DYNABASE_TEST_MONGODB_URL` / `DYNABASE_TEST_REDIS_URL`), in a fresh
//! database and key prefix, with 100 organizations:
//!
//! - in-process: `TenantRegistry::tenant` for a running tenant actor;
//! - Redis hit: the cache's `GET` + decode, and a cold registry lookup that
//!   the cache answers (starting the tenant actor);
//! - MongoDB cold: the store's `find_one`, and a cold registry lookup that
//!   the store answers (cache miss, store read, actor start);
//! - churn: 10,000 connects (lookup + `Admit` + `Release`) over the 100
//!   organizations from 16 concurrent clients, on a fresh replica with an
//!   empty cache, then on a second replica sharing the warm cache.
//!
//! Prints a Markdown section for `load-tests/RESULTS.md`.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use dynabase::adapters::{redis_tier_cache::RedisTierCache, store::MongoStore};
use dynabase_actors::{
    domain::organization::LifecycleState,
    tenant::{Admit, Layer, Release, TenantRegistry},
    tier_cache::{NoTierCache, TierCache},
    OrgId, Organization, Store, Tier, TierCatalog, UnixMillis, Upstream,
};

const ORGS: usize = 100;
const IN_PROCESS_SAMPLES: usize = 200_000;
const LAYER_SAMPLES: usize = 5_000;
const CHURN_CONNECTS: usize = 10_000;
const CHURN_CLIENTS: usize = 16;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let f = |d: Duration| {
        if d < Duration::from_micros(10) {
            format!("{} ns", d.as_nanos())
        } else {
            format!("{:.3} ms", d.as_secs_f64() * 1e3)
        }
    };
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        samples.len(),
        f(percentile(&samples, 0.5)),
        f(percentile(&samples, 0.95)),
        f(percentile(&samples, 0.99)),
        f(*samples.last().unwrap_or(&Duration::ZERO)),
    )
}

fn catalog() -> Arc<TierCatalog> {
    let dir = std::env::temp_dir();
    let options = dynabase::settings::LoadOptions {
        config_dir: dir.join("dynabase-bench-no-config"),
        env: Default::default(),
    };
    Arc::new(
        dynabase::settings::load(&options)
            .expect("built-in configuration")
            .catalog,
    )
}

fn org(i: usize) -> Organization {
    Organization {
        id: OrgId::parse(&format!("bench-{i:03}")).expect("valid id"),
        name: format!("Bench {i}"),
        tier: Tier::ALL[i % 4],
        upstream: Upstream::parse("127.0.0.1:5432").expect("valid upstream"),
        stripe_customer_id: Some(format!("cus_bench{i}")),
        stripe_subscription_id: None,
        pending_tier_change: None,
        created_at: UnixMillis(1),
        updated_at: UnixMillis(1),
        lifecycle: LifecycleState::default(),
        compute: Default::default(),
    }
}

/// A tiny deterministic generator, so runs are comparable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

struct Churn {
    lookups: Vec<Duration>,
    process: usize,
    cache: usize,
    store: usize,
}

async fn churn(registry: &TenantRegistry, ids: &[OrgId], seed: u64) -> Churn {
    let per_client = CHURN_CONNECTS / CHURN_CLIENTS;
    let tasks: Vec<_> = (0..CHURN_CLIENTS)
        .map(|c| {
            let (registry, ids) = (registry.clone(), ids.to_vec());
            tokio::spawn(async move {
                let mut rng = Lcg(seed + c as u64);
                let mut out = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let id = &ids[rng.next(ids.len())];
                    let started = Instant::now();
                    let (addr, layer) = registry
                        .tenant_with_layer(id)
                        .await
                        .expect("lookup")
                        .expect("known org");
                    out.push((started.elapsed(), layer));
                    if let Ok(Ok(_)) = addr.send(Admit).await {
                        addr.do_send(Release);
                    }
                }
                out
            })
        })
        .collect();
    let mut result = Churn {
        lookups: Vec::with_capacity(CHURN_CONNECTS),
        process: 0,
        cache: 0,
        store: 0,
    };
    for t in tasks {
        for (d, layer) in t.await.expect("client task") {
            result.lookups.push(d);
            match layer {
                Layer::Process => result.process += 1,
                Layer::Cache => result.cache += 1,
                Layer::Store => result.store += 1,
            }
        }
    }
    result
}

fn churn_row(name: &str, c: &Churn) -> String {
    let total = c.lookups.len() as f64;
    format!(
        "| {name} | {} | {} | {} | {} | {:.2}% | {:.2}% |",
        c.lookups.len(),
        c.process,
        c.cache,
        c.store,
        100.0 * (c.process + c.cache) as f64 / total,
        100.0 * c.process as f64 / total,
    )
}

fn main() {
    let mongo_url = std::env::var("DYNABASE_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let redis_url = std::env::var("DYNABASE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    });
    system.block_on(run(mongo_url, redis_url));
}

async fn run(mongo_url: String, redis_url: String) {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let database = format!("dynabase_bench_{stamp}");
    let prefix = format!("bench{stamp}");
    let mongo = MongoStore::connect(&mongo_url, &database)
        .await
        .expect("MongoDB-wire server (scripts/services.sh start)");
    let admin_db = mongo.database().clone();
    let store: Arc<dyn Store> = Arc::new(mongo);
    let client = redis::Client::open(redis_url.as_str()).expect("Redis URL");
    let cache: Arc<dyn TierCache> = Arc::new(
        RedisTierCache::new(&client, &prefix, Duration::from_secs(300)).expect("Redis cache"),
    );
    let catalog = catalog();
    let orgs: Vec<Organization> = (0..ORGS).map(org).collect();
    for o in &orgs {
        store.create_org(o).await.expect("create org");
    }
    let ids: Vec<OrgId> = orgs.iter().map(|o| o.id.clone()).collect();
    let mut rows = Vec::new();

    // MongoDB cold: the store read alone, then a registry lookup it answers.
    let mut samples = Vec::with_capacity(LAYER_SAMPLES);
    for i in 0..LAYER_SAMPLES {
        let started = Instant::now();
        store
            .get_org(&ids[i % ORGS])
            .await
            .expect("get")
            .expect("org");
        samples.push(started.elapsed());
    }
    rows.push(row("MongoDB: `find_one` by id", samples));
    let mut samples = Vec::new();
    for _ in 0..(LAYER_SAMPLES / ORGS) {
        // A fresh replica without a cache: every first lookup reads the store.
        let registry = TenantRegistry::new(store.clone(), catalog.clone())
            .with_tier_cache(Arc::new(NoTierCache));
        for id in &ids {
            let started = Instant::now();
            let (_, layer) = registry.tenant_with_layer(id).await.unwrap().unwrap();
            samples.push(started.elapsed());
            assert_eq!(layer, Layer::Store);
        }
    }
    rows.push(row(
        "MongoDB cold path: registry lookup (store read + actor start)",
        samples,
    ));

    // Redis hit: GET + decode, then a registry lookup the cache answers.
    for o in &orgs {
        cache.put(o).await.expect("SET");
    }
    let mut samples = Vec::with_capacity(LAYER_SAMPLES);
    for i in 0..LAYER_SAMPLES {
        let started = Instant::now();
        cache
            .get(&ids[i % ORGS])
            .await
            .expect("GET")
            .expect("cached");
        samples.push(started.elapsed());
    }
    rows.push(row("Redis hit: `GET` + decode", samples));
    let mut samples = Vec::new();
    for _ in 0..(LAYER_SAMPLES / ORGS) {
        let registry =
            TenantRegistry::new(store.clone(), catalog.clone()).with_tier_cache(cache.clone());
        for id in &ids {
            let started = Instant::now();
            let (_, layer) = registry.tenant_with_layer(id).await.unwrap().unwrap();
            samples.push(started.elapsed());
            assert_eq!(layer, Layer::Cache);
        }
    }
    rows.push(row(
        "Redis hit path: registry lookup (GET + actor start)",
        samples,
    ));

    // In-process: the running tenant actor, found in the registry's map.
    let registry =
        TenantRegistry::new(store.clone(), catalog.clone()).with_tier_cache(cache.clone());
    for id in &ids {
        registry.tenant(id).await.unwrap().unwrap();
    }
    let mut samples = Vec::with_capacity(IN_PROCESS_SAMPLES);
    for i in 0..IN_PROCESS_SAMPLES {
        let id = &ids[i % ORGS];
        let started = Instant::now();
        let found = registry.tenant(id).await;
        samples.push(started.elapsed());
        std::hint::black_box(found.ok());
    }
    rows.push(row(
        "In-process: registry lookup of a running tenant",
        samples,
    ));

    // Churn: a fresh replica on an empty cache, then a second replica
    // sharing the cache the first one filled.
    let fresh_prefix = format!("{prefix}churn");
    let churn_cache: Arc<dyn TierCache> = Arc::new(
        RedisTierCache::new(&client, &fresh_prefix, Duration::from_secs(300)).expect("cache"),
    );
    let first =
        TenantRegistry::new(store.clone(), catalog.clone()).with_tier_cache(churn_cache.clone());
    let a = churn(&first, &ids, 1).await;
    // Let the background cache writes of the first replica land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = TenantRegistry::new(store.clone(), catalog.clone()).with_tier_cache(churn_cache);
    let b = churn(&second, &ids, 2).await;
    let churn_rows = [
        churn_row("replica 1 (empty cache)", &a),
        churn_row("replica 2 (cache filled by replica 1)", &b),
    ];
    let lookups = [
        row("churn lookups, replica 1", a.lookups),
        row("churn lookups, replica 2", b.lookups),
    ];

    println!("| lookup | samples | median | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for r in rows.iter().chain(lookups.iter()) {
        println!("{r}");
    }
    println!();
    println!("| churn of {CHURN_CONNECTS} connects over {ORGS} orgs, {CHURN_CLIENTS} clients | connects | in-process | Redis | MongoDB | hit rate (process + Redis) | in-process hit rate |");
    println!("|---|---|---|---|---|---|---|");
    for r in &churn_rows {
        println!("{r}");
    }
    let _ = admin_db.drop().await;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for p in [&prefix, &fresh_prefix] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{p}:*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
    actix::System::current().stop();
}
