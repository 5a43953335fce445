//! The `claude-agent-http` binary: parse the command line, load config, init logging, run the app.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use claude_agent_http::app::App;
use claude_agent_http::config::{Config, LoadOptions};

#[derive(Parser)]
#[command(
    name = "claude-agent-http",
    version,
    about = "Claude Code agent sessions for many users, over REST and SSE"
)]
struct Cli {
    /// The YAML config file (default: ./config.yaml when present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve {
        /// Write the bound `host:port` to this file once listening (allows `api.port: 0`).
        #[arg(long, value_name = "PATH")]
        port_file: Option<PathBuf>,
    },
    /// Print the effective configuration as YAML, secrets redacted.
    PrintConfig,
    /// Exit 0 when `GET /health` on the configured address answers healthy.
    Healthcheck,
    /// Manage API keys in the configured store (also while the server runs).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print it (it is shown this once).
    Create {
        /// A user key, acting as this user only.
        #[arg(
            long,
            value_name = "USER_ID",
            conflicts_with = "admin",
            required_unless_present = "admin"
        )]
        user: Option<String>,
        /// An admin key, acting for every user.
        #[arg(long)]
        admin: bool,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Print the key and its record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never the keys themselves).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id: it stops working at once, on every instance sharing the store.
    Revoke {
        /// The key's id (`key_...`, as `keys list` shows).
        id: String,
    },
}

fn main() -> ExitCode {
    // The sandbox launcher (the service re-executing itself per agent): no config, no logging.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(claude_agent_http::agent::sandbox::SUBCOMMAND) {
        claude_agent_http::agent::sandbox::helper_main(&args[1..]);
    }
    claude_agent_http::tls::install_crypto_provider();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { port_file: None });
    let options = LoadOptions {
        allow_ephemeral_port: matches!(&command, Command::Serve { port_file: Some(_) }),
    };
    let (config, warnings) =
        match Config::load_with_warnings(cli.config.as_deref(), std::env::vars(), options) {
            Ok(loaded) => (loaded.config, loaded.warnings),
            Err(e) => {
                eprintln!("claude-agent-http: {e}");
                return ExitCode::from(2);
            }
        };
    if !matches!(command, Command::Serve { .. }) {
        for warning in &warnings {
            eprintln!("claude-agent-http: warning: {warning}");
        }
    }
    match command {
        Command::PrintConfig => {
            print!(
                "{}",
                yaml_serde::to_string(&config.redacted()).expect("config serializes")
            );
            ExitCode::SUCCESS
        }
        Command::Healthcheck => healthcheck(&config),
        Command::Keys { action } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(keys(config, action))
        }
        Command::Serve { port_file } => {
            init_logging(cli.log_json);
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let code = runtime.block_on(serve(config, port_file));
            // A CLI install may still run on a blocking thread: do not wait for it to exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

async fn serve(config: Config, port_file: Option<PathBuf>) -> ExitCode {
    // Handlers first: a signal that arrives as soon as we report ready must still shut down
    // gracefully, not kill the process with the default action.
    let shutdown = shutdown_signal();
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("claude-agent-http: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = port_file {
        // Write then rename, so a reader never sees a half-written file.
        let partial = path.with_extension("partial");
        let written = std::fs::write(&partial, app.local_addr().to_string())
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(e) = written {
            eprintln!("claude-agent-http: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future completes on either signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    }
}

/// `keys create | list | revoke`, on the configured store.
async fn keys(config: Config, action: KeysAction) -> ExitCode {
    use claude_agent_http::domain::Role;
    let auth = match claude_agent_http::app::key_admin(&config).await {
        Ok(auth) => auth,
        Err(e) => {
            eprintln!("claude-agent-http: {e}");
            return ExitCode::FAILURE;
        }
    };
    let caller = claude_agent_http::domain::Caller {
        principal: claude_agent_http::domain::Principal::admin(
            claude_agent_http::domain::Credential::CommandLine,
        ),
        remote_addr: None,
        request_id: None,
    };
    let result = match action {
        KeysAction::Create {
            user,
            admin,
            name,
            json,
        } => {
            let role = if admin { Role::Admin } else { Role::User };
            auth.create_key(&caller, role, user.as_deref(), name)
                .await
                .map(|(record, key)| {
                    if json {
                        let mut value = key_json(&record);
                        value["key"] = serde_json::Value::String(key);
                        println!("{value}");
                    } else {
                        println!("{key}");
                        eprintln!(
                            "created {} ({} key{}): store it now, it is not shown again",
                            record.id,
                            record.role.as_str(),
                            record
                                .user_id
                                .as_deref()
                                .map(|u| format!(" for {u}"))
                                .unwrap_or_default()
                        );
                    }
                })
        }
        KeysAction::List { json } => auth.list_keys().await.map(|keys| {
            if json {
                let list: Vec<_> = keys.iter().map(key_json).collect();
                println!("{}", serde_json::Value::Array(list));
                return;
            }
            println!(
                "{:<22} {:<6} {:<16} {:<13} {:<21} {:<10} NAME",
                "ID", "ROLE", "USER", "PREFIX", "CREATED", "STATE"
            );
            for key in keys {
                println!(
                    "{:<22} {:<6} {:<16} {:<13} {:<21} {:<10} {}",
                    key.id,
                    key.role.as_str(),
                    key.user_id.as_deref().unwrap_or("-"),
                    key.prefix,
                    key.created_at.format("%Y-%m-%d %H:%M:%S"),
                    if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    key.name.as_deref().unwrap_or("")
                );
            }
        }),
        KeysAction::Revoke { id } => auth.revoke_key(&caller, &id).await.map(|key| {
            eprintln!("revoked {}", key.id);
        }),
    };
    // The audit record of a change must be written before the process exits.
    auth.audit().flush().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claude-agent-http: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A key's record as JSON (never the key).
fn key_json(key: &claude_agent_http::auth::ApiKeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "role": key.role.as_str(),
        "user_id": key.user_id,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
    })
}

fn healthcheck(config: &Config) -> ExitCode {
    let host = match config.api.host.as_str() {
        "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        host => host,
    };
    let url = format!("http://{host}:{}/health", config.api.port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let response = client.get(&url).send().await?;
        let healthy = response.status().is_success();
        let body: serde_json::Value = response.json().await?;
        Ok::<bool, reqwest::Error>(healthy && body["status"] == "healthy")
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("unhealthy: {url}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unreachable: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // Colours only for a person at a terminal: log collectors (journald, docker logs) get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        // Span fields (request, session, user, turn ids) on the top level of every line.
        builder
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(claude_agent_http::telemetry::json_log::FlatJson)
            .init();
    } else {
        builder.init();
    }
}
