//! `mcp-pool-gateway`: serves the gateway's router (see the library's docs).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use mcp_pool::{Pool, ServerConfig, ServerId, Settings, traits::StateId};
use mcp_pool_gateway::{
    AppState, Auth, GatewayConfig, Registry, admin, auth,
    config::GatewayTable,
    serve,
    workers::{self, WorkerId},
};
use tokio_util::sync::CancellationToken;

const AFTER_HELP: &str = "\
Environment (a .env file in the working directory is read first; the environment wins over it):
  HOST              address to listen on (default 127.0.0.1); --host wins
  PORT              port to listen on (default 4444; 0 picks a free one); --port wins
  JWT_SECRET_KEY    HMAC key of the HS256 bearer tokens, 32 bytes or more (openssl rand -hex
                    32); required while AUTH_REQUIRED is true
  JWT_AUDIENCE, JWT_ISSUER
                    optional: tokens must name this aud / iss (the token command adds them)
  AUTH_REQUIRED     true (default) or false: bearer token on every route but /health and /ready
  MAX_BODY_BYTES    largest request body in bytes (default 4194304 = 4 MiB; 1 to 1073741824)
  HEADER_READ_TIMEOUT_SECS
                    seconds a connection has, from accept or from the end of its previous
                    response, to send a complete request head, else it is closed; also the
                    keep-alive idle timeout (default 10; 1 to 3600)
  BODY_READ_TIMEOUT_SECS
                    seconds a request body has to arrive completely, else 408 (default 30;
                    1 to 3600)
  MAX_CONNECTIONS   most connections open at once; further ones wait in the listen backlog
                    (default 512; 1 to 1000000; keep it under the open-file limit, ulimit -n)
  ADMIN_USERNAME, ADMIN_PASSWORD
                    optional: the Admin UI's (/admin) username and password sign-in, which
                    mints a 60-minute admin token; both or neither, the password 12+
                    characters; after 3 failures per username and address, waits that double
  CREDENTIALS_ENV_ALLOWED
                    variables a server's credentials.env may name: NAME,PREFIX_* (default:
                    none); the gateway's and the pool's own settings never
  UPSTREAM_ALLOW_CIDRS, UPSTREAM_DENY_CIDRS
                    networks endpoints may (not) resolve to (default deny: 169.254.0.0/16,
                    fd00:ec2::254/128, the cloud metadata addresses; loopback is allowed)
  ALLOWED_ORIGINS   browser origins allowed on the MCP routes besides the gateway's own
                    (default: none; requests without Origin always pass)
  DOWNSTREAM_SESSIONS_PER_USER
                    downstream MCP sessions one user may hold in this worker (default 100)
  DOWNSTREAM_SESSION_IDLE_TIMEOUT
                    seconds after which an idle downstream session ends (default 300)
  SESSION_POOL_*, CACHE_TYPE, REDIS_URL, DATABASE_URL, USE_STATEFUL_SESSIONS: the pool's
                    variables (docs/configuration.md); they win over the --config file
  CACHE_TYPE        where saved pool configs and the server registry live: memory (default),
                    database (DATABASE_URL=sqlite:FILE keeps them across restarts, or
                    postgres://…), redis (REDIS_URL); with redis or postgres several workers
                    share them (gateway/README.md, \"Several workers\")
  STATE_NAMESPACE   the prefix of this gateway's keys and channels in the state backend
                    (default gateway): the workers of one group share it; another group on the
                    same backend uses another
  WORKER_ID         this worker's id in the group; --worker-id wins (default: host-pid-random)
  SERVER_CHECKS     true (default) or false: check each server's endpoints (connect and
                    initialize once) at start and when added or changed; a failure is logged
                    and shown in /servers/pools/health before the first client
  RUST_LOG          the log filter (default info,rmcp=warn); rmcp=debug logs every MCP
                    message in full, tool arguments included

Signals: SIGINT/SIGTERM drain and shut down; SIGHUP re-reads the --config file and applies
what changed in its servers (changed endpoints drain that server's pool; an invalid file is
logged and nothing is applied)";

/// An MCP gateway on mcp-pool: REST API for servers and pools, JWT auth, OpenAPI, metrics.
#[derive(Parser, Debug)]
#[command(name = "mcp-pool-gateway", version, after_help = AFTER_HELP)]
struct Cli {
    /// Address to listen on [env: HOST] [default: 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on, 0 for a free one [env: PORT] [default: 4444]
    #[arg(long)]
    port: Option<String>,
    /// TOML file with [settings], [pool] and [[servers]] (the pool's configuration file; its
    /// servers seed the registry, whose API changes are kept in the state backend) and
    /// [gateway] (host, port, auth_required, max_body_bytes; variables and flags win over it)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve the reference MCP server in process and register it as server `demo`
    #[arg(long)]
    demo: bool,
    /// This worker's id among the workers sharing the state backend, 1 to 128 characters of
    /// [a-zA-Z0-9_-] [env: WORKER_ID] [default: host name, process id and a random suffix]
    #[arg(long)]
    worker_id: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print an HS256 JWT signed with JWT_SECRET_KEY
    Token {
        /// The token's subject (the user)
        #[arg(long)]
        sub: String,
        /// What the token may do: `user` (the default, least privilege: the MCP routes of the
        /// servers the user may use, and reads about them) or `admin` (also every write of the
        /// REST API, pool sessions and /metrics)
        #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
        role: String,
        /// A group the user belongs to (the `groups` claim, matched by servers' access lists);
        /// repeat for several
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Minutes until it expires
        #[arg(long, default_value_t = 60)]
        exp_minutes: u64,
    },
}

fn main() -> ExitCode {
    // A missing .env is normal; a malformed one is not.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // rmcp logs every message it receives in full (tool arguments, upstream log
            // payloads) at info and debug: not by default.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable `name`, if set.
fn lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Some(Command::Token {
        sub,
        role,
        groups,
        exp_minutes,
    }) = &cli.command
    {
        println!("{}", token(sub, role, groups, *exp_minutes)?);
        return Ok(());
    }
    let (config, settings) = read_config(&cli)?;
    let namespace = lookup("STATE_NAMESPACE").unwrap_or_else(|| "gateway".into());
    let namespace = StateId::new(&namespace).map_err(|e| format!("STATE_NAMESPACE: {e}"))?;
    let backend = settings
        .backend
        .connect(namespace.clone())
        .await
        .map_err(|e| format!("state backend: {e}"))?;
    let demo = if cli.demo {
        Some(
            mcp_pool_reference::ReferenceServer::start()
                .await
                .map_err(|e| format!("--demo: starting the reference server: {e}"))?,
        )
    } else {
        None
    };
    let (pool, servers) = build_pool(&settings, backend, demo.as_ref())?;
    let metrics = if settings.metrics_enabled {
        Some(
            mcp_pool_gateway::metrics::prometheus_builder()
                .install_recorder()
                .map_err(|e| format!("metrics recorder: {e}"))?,
        )
    } else {
        None
    };
    if matches!(config.auth, Auth::Disabled) {
        tracing::warn!("AUTH_REQUIRED=false: the REST API is open to anyone who can reach it");
    }
    let registry = load_registry(&pool, &servers, &config).await?;
    let login = admin_login(&config.auth)?;
    let mut state = AppState {
        pool: pool.clone(),
        registry,
        auth: config.auth.clone(),
        max_body_bytes: config.max_body_bytes,
        metrics,
        policy: std::sync::Arc::new(config.policy.clone()),
        downstream: Default::default(),
        group: None,
    };
    let shutdown_group = CancellationToken::new();
    let membership = join_workers(&cli, &mut state, &namespace, shutdown_group.clone())?;
    // Listening before the address is logged: a SIGHUP from then on reloads, never kills.
    #[cfg(unix)]
    let _reloader = {
        use tokio::signal::unix::{SignalKind, signal};
        let hangups = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
        tokio::spawn(reload_on_hangup(
            hangups,
            state.registry.clone(),
            cli.config.clone(),
            settings.servers.clone(),
        ))
    };
    serve_until_signal(&config, state, login).await?;
    tracing::info!("shutting down: closing the pool");
    shutdown_group.cancel();
    if let Some(membership) = membership {
        // Other workers take this worker's sessions over at once, without waiting for a TTL.
        membership.leave().await;
    }
    pool.close().await;
    if let Some(demo) = demo {
        demo.stop().await;
    }
    Ok(())
}

/// `token`: an HS256 JWT for `sub` with `role` and `groups`, expiring in `exp_minutes`, signed
/// with `JWT_SECRET_KEY` (and naming `JWT_AUDIENCE` and `JWT_ISSUER` when they are set).
fn token(sub: &str, role: &str, groups: &[String], exp_minutes: u64) -> Result<String, String> {
    let secret = lookup("JWT_SECRET_KEY")
        .filter(|s| !s.is_empty())
        .ok_or("JWT_SECRET_KEY is not set: the token command signs with it")?;
    let secret = auth::JwtSecret::new(secret).map_err(|e| e.to_string())?;
    if sub.trim().is_empty() {
        return Err("--sub is empty: a token must name its user".into());
    }
    let ttl = Duration::from_secs(exp_minutes.saturating_mul(60));
    let role: auth::Role = role.parse()?;
    let mut claims = auth::Claims::new(sub, role, ttl, std::time::SystemTime::now());
    claims.groups = groups.to_vec();
    if let Some(audience) = lookup("JWT_AUDIENCE").filter(|v| !v.trim().is_empty()) {
        claims.aud = Some(audience.trim().into());
    }
    if let Some(issuer) = lookup("JWT_ISSUER").filter(|v| !v.trim().is_empty()) {
        claims.iss = Some(issuer.trim().to_owned());
    }
    auth::sign(&secret, &claims).map_err(|e| e.to_string())
}

/// The gateway's settings and the pool's, from the `--config` file, the environment (which
/// wins over the file) and the flags (which win over both).
fn read_config(cli: &Cli) -> Result<(GatewayConfig, Settings), String> {
    let table = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            GatewayTable::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?
        }
        None => GatewayTable::default(),
    };
    let config = GatewayConfig::from_lookup(cli.host.as_deref(), cli.port.as_deref(), |name| {
        lookup(name).or_else(|| table.var(name))
    })
    .map_err(|e| e.to_string())?;
    let vars = std::env::vars_os()
        .filter_map(|(n, v)| Some((n.into_string().ok()?, v.into_string().ok()?)));
    let settings = Settings::from_vars(cli.config.as_ref(), vars).map_err(|e| e.to_string())?;
    Ok((config, settings))
}

/// The pool over `backend` with the configuration file's servers, and `demo` as the server
/// `demo` when it runs; also the servers it started with.
fn build_pool(
    settings: &Settings,
    backend: std::sync::Arc<dyn mcp_pool::StateBackend>,
    demo: Option<&mcp_pool_reference::ReferenceServer>,
) -> Result<(Pool, Vec<ServerConfig>), String> {
    let mut servers = settings.servers.clone();
    let mut builder = settings.builder().backend(backend);
    if let Some(demo) = demo {
        let id = ServerId::new("demo").map_err(|e| e.to_string())?;
        let pool = settings.pool_config_for(&id);
        let server = ServerConfig::new(id, demo.endpoint()).pool(pool);
        servers.push(server.clone());
        builder = builder.server(server);
    }
    for server in &servers {
        mcp_pool_gateway::log_pool_update(server.id(), server.pool_config());
    }
    let pool = builder.build().map_err(|e| e.to_string())?;
    Ok((pool, servers))
}

/// The server registry over `pool`, from its `servers` and the state backend's records,
/// checked when `SERVER_CHECKS` is on.
async fn load_registry(
    pool: &Pool,
    servers: &[ServerConfig],
    config: &GatewayConfig,
) -> Result<Registry, String> {
    let registry = Registry::load_with(pool.clone(), servers, config.policy.credentials.clone())
        .await
        .map_err(|e| format!("server registry: {e}"))?;
    if config.server_checks {
        registry.check_servers().await;
    }
    // After the registry: the backend's records may add, change or remove servers.
    tracing::info!(
        "pool manager initialized with {} servers",
        pool.stats().servers.len()
    );
    Ok(registry)
}

/// The Admin UI's sign-in routes, when `ADMIN_USERNAME` and `ADMIN_PASSWORD` are set and auth
/// is on.
fn admin_login(auth: &Auth) -> Result<Option<axum::Router>, String> {
    let login = admin::AdminLogin::from_vars(lookup("ADMIN_USERNAME"), lookup("ADMIN_PASSWORD"))
        .map_err(|e| e.to_string())?;
    Ok(match (login, auth) {
        (Some(login), Auth::Required(verifier)) => {
            Some(admin::login_routes(login, verifier.clone()))
        }
        (Some(_), Auth::Disabled) => {
            tracing::warn!(
                "ADMIN_USERNAME/ADMIN_PASSWORD ignored: AUTH_REQUIRED=false needs no sign-in"
            );
            None
        }
        (None, _) => None,
    })
}

/// Joins `state` to the workers sharing its state backend, when it is shared, until
/// `shutdown`; the worker's id is made now, after start-up, so that two processes never share
/// one.
fn join_workers(
    cli: &Cli,
    state: &mut AppState,
    namespace: &StateId,
    shutdown: CancellationToken,
) -> Result<Option<workers::Membership>, String> {
    let worker = match cli.worker_id.clone().or_else(|| lookup("WORKER_ID")) {
        Some(id) => WorkerId::new(&id)?,
        None => WorkerId::generate(),
    };
    let backend = state.pool.backend().clone();
    if backend.name() == "memory" {
        tracing::info!("worker {worker}: memory state backend, nothing shared");
        return Ok(None);
    }
    // The key of relayed requests' envelopes ([`mcp_pool_gateway::cluster`]): the token key
    // when auth is on; with auth off there is nothing to protect, and the namespace keeps
    // groups apart.
    let key =
        lookup("JWT_SECRET_KEY").unwrap_or_else(|| format!("mcp-pool-gateway group {namespace}"));
    let membership = workers::join(state, worker.clone(), key.as_bytes(), shutdown)?;
    tracing::info!(
        "worker {worker} joined the workers sharing the {} state backend",
        backend.name()
    );
    Ok(Some(membership))
}

/// Listens on the configured address and serves the gateway's router (with the Admin UI's
/// `login` routes) until SIGINT or SIGTERM, then ends every downstream session and waits for
/// the connections to finish.
async fn serve_until_signal(
    config: &GatewayConfig,
    state: AppState,
    login: Option<axum::Router>,
) -> Result<(), String> {
    let downstream = state.downstream.clone();
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| format!("binding {}:{}: {e}", config.host, config.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("gateway listening on http://{addr}");
    let mut app = mcp_pool_gateway::router(state);
    if let Some(login) = login {
        app = app.merge(login);
    }
    // TCP_NODELAY on every connection, timeouts for clients that hold one without sending,
    // the connection cap (serve::ServerLimits).
    serve::serve(listener, app, &config.limits, async move {
        shutdown_signal().await;
        // Open downstream streams would hold the graceful shutdown forever.
        downstream.shutdown();
    })
    .await
    .map_err(|e| e.to_string())
}

/// On every SIGHUP: re-reads the `--config` file (and the environment, which wins over it)
/// and applies what changed in its servers ([`reload::reload`]); an invalid file is logged with
/// the reason and nothing is applied.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    registry: Registry,
    path: Option<PathBuf>,
    mut servers: Vec<ServerConfig>,
) {
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: no --config file to reload");
            continue;
        };
        let vars = std::env::vars_os()
            .filter_map(|(n, v)| Some((n.into_string().ok()?, v.into_string().ok()?)));
        let next = match Settings::from_vars(Some(path), vars) {
            Ok(settings) => settings.servers,
            Err(e) => {
                tracing::error!("SIGHUP: configuration not reloaded, nothing applied: {e}");
                continue;
            }
        };
        match registry.reload_seeds(&servers, &next).await {
            Ok(done) => {
                let changed = |id: String| {
                    done.added.contains(&id)
                        || done.drained.contains(&id)
                        || done.updated.contains(&id)
                };
                for server in next.iter().filter(|s| changed(s.id().to_string())) {
                    mcp_pool_gateway::log_pool_update(server.id(), server.pool_config());
                }
                // Added or reconnected by the file: checked as the API's are.
                for server in next.iter().filter(|s| {
                    let id = s.id().to_string();
                    done.added.contains(&id) || done.drained.contains(&id)
                }) {
                    registry.check(server.id());
                }
                tracing::info!(
                    "SIGHUP: configuration reloaded from {}: added {:?}, drained (connection changed) {:?}, updated {:?}, kept (removed from the file; needs a restart) {:?}",
                    path.display(),
                    done.added,
                    done.drained,
                    done.updated,
                    done.kept
                );
                servers = next;
            }
            Err(e) => {
                tracing::error!("SIGHUP: configuration not reloaded: {e}");
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
