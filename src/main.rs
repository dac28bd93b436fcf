//! The `dynabase` binary: parses the command line and configuration, then
//! hands over to `app::run` (serve), `settings` (configcheck) or `org_cli`.
#![forbid(unsafe_code)]

use std::{net::TcpListener, process::ExitCode};

use clap::Parser;
use dynabase::{
    app, billing_cli,
    cli::{Cli, Command},
    org_cli,
    settings::{self, LoadOptions, Secret, Settings},
};
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { dev: false });
    let settings = match settings::load(&LoadOptions::from_process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dynabase: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Configcheck => {
            println!("configuration OK");
            println!(
                "  http {}:{}  proxy {}:{}  store {}  redis {}",
                settings.http.host,
                settings.http.port,
                settings.proxy.host,
                settings.proxy.port,
                if settings.store.mongodb.is_some() {
                    "mongodb"
                } else {
                    "embedded"
                },
                if settings.redis.is_some() {
                    "configured"
                } else {
                    "none"
                },
            );
            ExitCode::SUCCESS
        }
        Command::Org { command } => one_shot(org_cli::run(&settings, command)),
        Command::Billing { command } => one_shot(billing_cli::billing(&settings, command)),
        Command::Usage { command } => one_shot(billing_cli::usage(&settings, command)),
        Command::Calibrate { period, bill_usd } => one_shot(billing_cli::calibrate(
            &settings,
            &period,
            bill_usd.as_deref(),
        )),
        Command::Serve { dev } => serve(settings, dev),
    }
}

/// Runs an operator command to completion and prints its output.
fn one_shot<E: std::fmt::Display>(
    command: impl std::future::Future<Output = Result<String, E>>,
) -> ExitCode {
    init_tracing("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynabase: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dynabase: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_filter: &str) {
    init_tracing_as(default_filter, false);
}

/// Readable lines, or (`log.format = "json"`) one JSON object per line
/// whose fields log shippers index.
fn init_tracing_as(default_filter: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn serve(mut settings: Settings, dev: bool) -> ExitCode {
    init_tracing_as(&settings.log_filter, settings.log_json);
    let dev = dev || settings.http.dev_mode;
    let mut generated_token = false;
    if dev && settings.http.admin_token.is_empty() {
        match random_token() {
            Ok(token) => {
                settings.http.admin_token = Secret::new(token);
                generated_token = true;
            }
            Err(e) => {
                eprintln!("dynabase: cannot generate a development admin token: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        eprintln!("dynabase: cannot install metrics recorder: {e}");
        return ExitCode::FAILURE;
    }
    let http = match TcpListener::bind((settings.http.host.as_str(), settings.http.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "dynabase: cannot listen on {}:{}: {e}",
                settings.http.host, settings.http.port
            );
            return ExitCode::FAILURE;
        }
    };
    let proxy = match TcpListener::bind((settings.proxy.host.as_str(), settings.proxy.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "dynabase: cannot listen on {}:{}: {e}",
                settings.proxy.host, settings.proxy.port
            );
            return ExitCode::FAILURE;
        }
    };
    let http_addr = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let proxy_addr = proxy
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // These lines are the interface for people and scripts starting us.
    println!("dynabase: HTTP API listening on http://{http_addr}");
    println!("dynabase: PostgreSQL proxy listening on {proxy_addr} (connect as user <role>.<organization>)");
    match &settings.store.mongodb {
        Some(_) => println!("dynabase: store: MongoDB"),
        None => println!(
            "dynabase: store: embedded, in {}",
            settings.store.data_dir.display()
        ),
    }
    if generated_token {
        println!(
            "dynabase: development mode; admin token for this run: {}",
            settings.http.admin_token.expose()
        );
        println!(
            "dynabase: create an organization: curl -X POST http://{local}/admin/orgs -H 'Authorization: Bearer {}' -d '{{\"id\":\"acme\",\"name\":\"Acme\",\"tier\":\"free\",\"upstream\":\"127.0.0.1:5432\"}}'",
            settings.http.admin_token.expose(),
            local = local_address(&http)
        );
    }

    // Actors run on the main thread's arbiter; background tasks (usage feed,
    // Redis, lifecycle ticks) on the small runtime underneath it. Proxy
    // sessions have threads of their own (proxy::threads).
    let system = actix::System::with_tokio_rt(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the tokio runtime: {e}"))
    });
    let listeners = app::Listeners { http, proxy };
    let result = system.block_on(app::run(settings, listeners, metrics, shutdown_signal()));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dynabase: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Railway's stop signal) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping only on Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Where a person on this machine reaches `listener` (a wildcard bind
/// is reachable on loopback).
fn local_address(listener: &TcpListener) -> String {
    match listener.local_addr() {
        Ok(addr) if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        Ok(addr) => addr.to_string(),
        Err(_) => String::new(),
    }
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
