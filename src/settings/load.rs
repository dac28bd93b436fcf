//! Layering the configuration sources, in the order operators expect.
//!
//! `config/default.toml` → `config/tiers.toml` → `config/$DYNABASE_ENV.toml`
//! (optional) → `DYNABASE__SECTION__KEY` → the conventional variables `PORT`,
//! `MONGODB_URL`, `REDIS_URL`, `DYNABASE_ADMIN_TOKEN`, `RAILWAY_REPLICA_ID`,
//! `STRIPE_WEBHOOK_SECRET`, `STRIPE_API_KEY`, `RAILWAY_API_TOKEN`, `DYNABASE_NOTIFICATION_SECRET`. When the config
//! directory has no `default.toml`/`tiers.toml`, copies compiled into the
//! binary are used, so the binary runs from any directory.

use std::{collections::HashMap, path::PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::{raw::RawSettings, validate::validate, Problem, Settings, SettingsError};

const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
const TIERS_TOML: &str = include_str!("../../config/tiers.toml");

/// Where to read from; the environment is passed in so tests choose it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub config_dir: PathBuf,
    pub env: HashMap<String, String>,
}

impl LoadOptions {
    /// `DYNABASE_CONFIG_DIR` (default `config`) and the process environment.
    pub fn from_process() -> Self {
        let env: HashMap<String, String> = std::env::vars().collect();
        let config_dir = env
            .get("DYNABASE_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        Self { config_dir, env }
    }
}

/// Loads and validates the configuration, reporting every problem found.
pub fn load(options: &LoadOptions) -> Result<Settings, SettingsError> {
    let mut problems = Vec::new();
    let config = match build(options) {
        Ok(config) => config,
        Err(e) => {
            return Err(SettingsError::Invalid(vec![Problem {
                key: "(sources)".into(),
                message: e.to_string(),
            }]))
        }
    };
    let mut unknown = Vec::new();
    let raw: Result<RawSettings, _> =
        serde_ignored::deserialize(config, |path| unknown.push(path.to_string()));
    problems.extend(unknown.into_iter().map(|key| Problem {
        key,
        message: "unknown key".into(),
    }));
    match raw {
        Ok(raw) => match validate(raw) {
            Ok(settings) if problems.is_empty() => Ok(settings),
            Ok(_) => Err(SettingsError::Invalid(problems)),
            Err(mut more) => {
                problems.append(&mut more);
                Err(SettingsError::Invalid(problems))
            }
        },
        Err(e) => {
            problems.push(Problem {
                key: "(parse)".into(),
                message: e.to_string(),
            });
            Err(SettingsError::Invalid(problems))
        }
    }
}

fn build(options: &LoadOptions) -> Result<Config, config::ConfigError> {
    let dir = &options.config_dir;
    let file_or_builtin = |name: &str, builtin: &'static str| {
        let path = dir.join(name);
        let text = if path.is_file() {
            std::fs::read_to_string(&path).map_err(|e| {
                config::ConfigError::Message(format!("cannot read {}: {e}", path.display()))
            })?
        } else {
            builtin.to_owned()
        };
        Ok::<_, config::ConfigError>(File::from_str(&text, FileFormat::Toml))
    };
    let mut builder = Config::builder()
        .add_source(file_or_builtin("default.toml", DEFAULT_TOML)?)
        .add_source(file_or_builtin("tiers.toml", TIERS_TOML)?);
    if let Some(env_name) = options.env.get("DYNABASE_ENV").filter(|s| !s.is_empty()) {
        builder = builder.add_source(
            File::from(dir.join(format!("{env_name}.toml")))
                .format(FileFormat::Toml)
                .required(false),
        );
    }
    let prefixed: HashMap<String, String> = options
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("DYNABASE__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix("DYNABASE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(prefixed)),
    );
    for (var, key) in [
        ("PORT", "http.port"),
        ("MONGODB_URL", "store.mongodb_url"),
        ("REDIS_URL", "redis.url"),
        ("DYNABASE_ADMIN_TOKEN", "http.admin_token"),
        ("STRIPE_WEBHOOK_SECRET", "stripe.webhook_secret"),
        ("STRIPE_API_KEY", "stripe.api_key"),
        ("RAILWAY_API_TOKEN", "railway.api_token"),
        (
            "DYNABASE_NOTIFICATION_SECRET",
            "notifications.signing_secret",
        ),
        ("RAILWAY_REPLICA_ID", "replica.id"),
    ] {
        builder = builder.set_override_option(key, options.env.get(var).cloned())?;
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(env: &[(&str, &str)], files: &[(&str, &str)]) -> (tempfile::TempDir, LoadOptions) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write config");
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let options = LoadOptions {
            config_dir: dir.path().to_path_buf(),
            env,
        };
        (dir, options)
    }

    #[test]
    fn built_in_defaults_are_valid() {
        let (_dir, opts) = options(&[], &[]);
        let s = load(&opts).expect("defaults load");
        assert_eq!((s.http.port, s.proxy.port), (8080, 6432));
        assert_eq!(
            s.catalog.get(dynabase_actors::Tier::Free).max_connections,
            5
        );
        assert_eq!(s.catalog.get(dynabase_actors::Tier::Enterprise).qps, None);
        assert!(s.store.mongodb.is_none() && s.redis.is_none());
    }

    #[test]
    fn environment_layers_override_files() {
        let (_dir, opts) = options(
            &[
                ("DYNABASE_ENV", "staging"),
                ("PORT", "9000"),
                ("DYNABASE__PROXY__PORT", "7000"),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
                ("DYNABASE_ADMIN_TOKEN", "s3cret"),
            ],
            &[("staging.toml", "[tiers.free]\nmax_connections = 7\n")],
        );
        let s = load(&opts).expect("valid");
        assert_eq!((s.http.port, s.proxy.port), (9000, 7000));
        assert_eq!(
            s.catalog.get(dynabase_actors::Tier::Free).max_connections,
            7
        );
        assert_eq!(s.http.admin_token.expose(), "s3cret");
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "secrets are redacted in Debug"
        );
    }

    #[test]
    fn usage_factors_are_exact_decimals() {
        let (_dir, opts) = options(
            &[
                ("DYNABASE__USAGE__ENABLED", "false"),
                ("DYNABASE__USAGE__FACTORS__UPDATE__COMPLEXITY", "1.4"),
            ],
            &[],
        );
        let s = load(&opts).expect("valid");
        let dec = |v: &str| v.parse::<rust_decimal::Decimal>().unwrap();
        assert_eq!(s.usage.factors.insert.complexity, dec("1.2"));
        assert_eq!(s.usage.factors.update.complexity, dec("1.4"));
        assert!(!s.usage.enabled);
        let (_dir, bad) = options(&[("DYNABASE__USAGE__FACTORS__DDL__PARALLELISM", "0")], &[]);
        let Err(SettingsError::Invalid(problems)) = load(&bad) else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["usage.factors.ddl.parallelism"]);
    }

    #[test]
    fn a_huge_usage_factor_is_a_problem_not_an_overflow() {
        // Found by fuzz/fuzz_targets/config_values.rs: complexity ×
        // parallelism overflowed Decimal and panicked while validating.
        let (_dir, bad) = options(
            &[(
                "DYNABASE__USAGE__FACTORS__DELETE__PARALLELISM",
                "66666666666666666666666666666",
            )],
            &[],
        );
        let Err(SettingsError::Invalid(problems)) = load(&bad) else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["usage.factors.delete"]);
        assert!(problems[0].message.contains("at most 1000000"));
        let (_dir, ok) = options(
            &[
                ("DYNABASE__USAGE__FACTORS__DELETE__COMPLEXITY", "1000"),
                ("DYNABASE__USAGE__FACTORS__DELETE__PARALLELISM", "1000"),
            ],
            &[],
        );
        load(&ok).expect("a product of exactly 1000000 is accepted");
    }

    #[test]
    fn stripe_api_key_and_base() {
        let (_dir, opts) = options(&[], &[]);
        let s = load(&opts).expect("defaults load");
        assert!(s.stripe.api_key.is_empty() && s.stripe.api_base.is_none());
        assert_eq!(s.stripe.request_timeout, std::time::Duration::from_secs(10));

        let (_dir, opts) = options(
            &[
                ("STRIPE_API_KEY", "sk_test_k3y"),
                ("DYNABASE__STRIPE__API_BASE", "http://127.0.0.1:12111"),
                ("DYNABASE__STRIPE__REQUEST_TIMEOUT", "3s"),
            ],
            &[],
        );
        let s = load(&opts).expect("valid");
        assert_eq!(s.stripe.api_key.expose(), "sk_test_k3y");
        assert_eq!(
            s.stripe.api_base.as_deref(),
            Some("http://127.0.0.1:12111/")
        );
        assert_eq!(s.stripe.request_timeout, std::time::Duration::from_secs(3));
        assert!(!format!("{s:?}").contains("sk_test_k3y"));

        let (_dir, bad) = options(
            &[
                ("STRIPE_API_KEY", "sk_test_k3y"),
                ("DYNABASE__STRIPE__API_BASE", "api.stripe.com"),
                ("DYNABASE__STRIPE__REQUEST_TIMEOUT", "0s"),
            ],
            &[],
        );
        let Err(err @ SettingsError::Invalid(_)) = load(&bad) else {
            panic!("must be invalid")
        };
        let SettingsError::Invalid(problems) = &err;
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["stripe.api_base", "stripe.request_timeout"]);
        assert!(!err.to_string().contains("sk_test_k3y"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (_dir, opts) = options(
            &[("DYNABASE_ENV", "bad"), ("DYNABASE__HTTP__COLOUR", "blue")],
            &[(
                "bad.toml",
                "[proxy]\nport = 70000\nmystery = 1\nbusy_poll = \"1s\"\n[tiers.free]\nmax_connections = -5\n",
            )],
        );
        let Err(SettingsError::Invalid(problems)) = load(&opts) else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "proxy.mystery",
            "http.colour",
            "proxy.port",
            "proxy.busy_poll",
            "tiers.free.max_connections",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }
}
