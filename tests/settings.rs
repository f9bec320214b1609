//! Configuration from the environment and a TOML file.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use mcp_pool::{
    ENV_VARIABLES, Endpoint, MAX_CREATE_TIMEOUT, MIN_CREATE_TIMEOUT, Pool, PoolConfig, Principal,
    ServerConfig, Settings, SettingsError, SettingsWarning, StrategyKind, TransportKind,
};
use mcp_pool_conformance::ReferenceServer;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    Settings::load(None::<&str>, env(pairs))
}

#[test]
fn defaults_are_pooling_off_round_robin_100_sessions_per_user_and_memory() {
    let s = load(&[]).unwrap();
    assert!(!s.defaults.enabled);
    assert_eq!(s.defaults.strategy, StrategyKind::RoundRobin);
    assert_eq!(s.user_limit, 100);
    assert_eq!(s.cleanup_interval, Duration::from_secs(60));
    assert_eq!(s.backend.cache_type(), "memory");
}

#[test]
fn both_spellings_are_accepted_and_must_agree() {
    assert!(
        load(&[("SESSION_POOL_ENABLED", "true")])
            .unwrap()
            .defaults
            .enabled
    );
    assert!(
        load(&[("SESSION_POOLING_ENABLED", "1")])
            .unwrap()
            .defaults
            .enabled
    );
    let s = load(&[("SESSION_POOL_MAX_IDLE", "120")]).unwrap();
    assert_eq!(s.defaults.max_idle_time, Duration::from_secs(120));
    let error = load(&[
        ("SESSION_POOL_ENABLED", "true"),
        ("SESSION_POOLING_ENABLED", "false"),
    ])
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"SESSION_POOL_ENABLED="true" and SESSION_POOLING_ENABLED="false" disagree: set one of them"#
    );
}

#[test]
fn bad_values_name_the_variable_the_value_and_what_is_allowed() {
    let cases = [
        (
            "SESSION_POOL_ENABLED",
            "maybe",
            "SESSION_POOL_ENABLED=\"maybe\" is invalid: must be true or false",
        ),
        (
            "SESSION_POOL_STRATEGY",
            "Random-Pick",
            "SESSION_POOL_STRATEGY=\"Random-Pick\" is invalid: must be one of round_robin",
        ),
        (
            "SESSION_POOL_SIZE",
            "0",
            "SESSION_POOL_SIZE=\"0\" is invalid: must be a whole number from 1 to 1000",
        ),
        (
            "SESSION_POOL_TTL",
            "59",
            "SESSION_POOL_TTL=\"59\" is invalid: must be a whole number from 60 to 86400 seconds",
        ),
        (
            "SESSION_POOL_USER_LIMIT",
            "-1",
            "SESSION_POOL_USER_LIMIT=\"-1\" is invalid: must be a whole number",
        ),
        (
            "SESSION_POOLING_SERVERS",
            "a,b c",
            "SESSION_POOLING_SERVERS=\"a,b c\" is invalid: must be a comma list of server ids",
        ),
        (
            "CACHE_TYPE",
            "memcached",
            "CACHE_TYPE = \"memcached\" is invalid: must be one of memory, redis, database",
        ),
    ];
    for (variable, value, message) in cases {
        let error = load(&[(variable, value)]).unwrap_err().to_string();
        assert!(error.starts_with(message), "{variable}: {error}");
    }
}

fn sizes(s: &Settings) -> (u32, u32, u32) {
    (s.defaults.min_size, s.defaults.size, s.defaults.max_size)
}

#[test]
fn pool_size_alone_raises_max_size() {
    let s = load(&[("SESSION_POOL_SIZE", "20")]).unwrap();
    assert_eq!(sizes(&s), (1, 20, 20));
}

#[test]
fn max_size_alone_lowers_the_default_size() {
    // The default size 5 (and min_size 1) follow a max_size set below them.
    let s = load(&[("SESSION_POOL_MAX_SIZE", "4")]).unwrap();
    assert_eq!(sizes(&s), (1, 4, 4));
    let s = load(&[("SESSION_POOL_MAX_SIZE", "1")]).unwrap();
    assert_eq!(sizes(&s), (1, 1, 1));
}

#[test]
fn min_size_alone_raises_the_default_size_and_max_size() {
    let s = load(&[("SESSION_POOL_MIN_SIZE", "6")]).unwrap();
    assert_eq!(sizes(&s), (6, 6, 10));
    let s = load(&[("SESSION_POOL_MIN_SIZE", "12")]).unwrap();
    assert_eq!(sizes(&s), (12, 12, 12));
}

#[test]
fn sizes_set_that_contradict_name_both_settings_and_never_a_default() {
    let rule = "(min_size <= size <= max_size); change one of them (sizes you do not set \
                follow the ones you set)";
    let cases: [(&[(&str, &str)], String); 3] = [
        (
            &[
                ("SESSION_POOL_MIN_SIZE", "8"),
                ("SESSION_POOL_MAX_SIZE", "4"),
            ],
            format!(
                "SESSION_POOL_MIN_SIZE=8 is above SESSION_POOL_MAX_SIZE=4: the sessions kept \
                 warm cannot exceed the hard cap {rule}"
            ),
        ),
        (
            &[("SESSION_POOL_SIZE", "6"), ("SESSION_POOL_MAX_SIZE", "4")],
            format!(
                "SESSION_POOL_SIZE=6 is above SESSION_POOL_MAX_SIZE=4: the target size cannot \
                 exceed the hard cap {rule}"
            ),
        ),
        (
            &[("SESSION_POOL_MIN_SIZE", "7"), ("SESSION_POOL_SIZE", "6")],
            format!(
                "SESSION_POOL_MIN_SIZE=7 is above SESSION_POOL_SIZE=6: the target size cannot \
                 be below the sessions kept warm {rule}"
            ),
        ),
    ];
    for (vars, message) in cases {
        let error = load(vars).unwrap_err();
        assert!(matches!(error, SettingsError::Sizes { .. }), "{error:?}");
        assert_eq!(error.to_string(), message);
    }
    // A size from the file and one from the environment: each named where it was set.
    let error = Settings::from_toml(
        "pool.toml",
        "[pool]\nmax_size = 6\n",
        env(&[("SESSION_POOL_SIZE", "20")]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "SESSION_POOL_SIZE=20 is above pool.max_size = 6 (pool.toml:2:12): the target size \
             cannot exceed the hard cap {rule}"
        )
    );
    // Within one server's table.
    let file = "[[servers]]\nid = \"a\"\n\
                endpoints = [{ url = \"http://127.0.0.1:1/mcp\", transport = \"streamable_http\" }]\n\
                pool = { size = 6, max_size = 4 }\n";
    let error = Settings::from_toml("pool.toml", file, env(&[])).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "servers[0].pool.size = 6 (pool.toml:4:17) is above servers[0].pool.max_size = 4 \
             (pool.toml:4:31): the target size cannot exceed the hard cap {rule}"
        )
    );
}

#[test]
fn a_servers_own_sizes_win_and_inherited_ones_follow() {
    let file = "[pool]\nmin_size = 3\n[[servers]]\nid = \"a\"\n\
                endpoints = [{ url = \"http://127.0.0.1:1/mcp\", transport = \"streamable_http\" }]\n\
                pool = { max_size = 2 }\n";
    let s = Settings::from_toml("pool.toml", file, env(&[])).unwrap();
    assert_eq!((s.defaults.min_size, s.defaults.size), (3, 5));
    let pool = s.servers[0].pool_config();
    assert_eq!((pool.min_size, pool.size, pool.max_size), (2, 2, 2));
}

#[tokio::test]
async fn a_struct_update_pool_config_follows_the_size_it_sets() {
    let url = "http://127.0.0.1:1/mcp";
    let id = server_id("search");
    let server = |pool| {
        ServerConfig::new(
            id.clone(),
            Endpoint::new(url, TransportKind::StreamableHttp).unwrap(),
        )
        .pool(pool)
    };
    let pool = Pool::builder()
        .server(server(PoolConfig {
            max_size: 4,
            ..PoolConfig::enabled()
        }))
        .build()
        .unwrap();
    let config = pool.server_config(&id).unwrap();
    assert_eq!((config.min_size, config.size, config.max_size), (1, 4, 4));
    pool.close().await;

    let pool = Pool::builder()
        .server(server(PoolConfig {
            min_size: 12,
            ..PoolConfig::enabled()
        }))
        .build()
        .unwrap();
    let config = pool.server_config(&id).unwrap();
    assert_eq!(
        (config.min_size, config.size, config.max_size),
        (12, 12, 12)
    );
    pool.close().await;

    // Sizes written that contradict each other are rejected, naming both fields.
    let error = Pool::builder()
        .server(server(PoolConfig {
            size: 6,
            max_size: 4,
            ..PoolConfig::enabled()
        }))
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration: size (6) is above max_size (4): the target size cannot exceed \
         the hard cap (min_size <= size <= max_size); set both, or let the sizes you did not \
         choose follow with PoolConfig::normalized()"
    );
}

#[tokio::test]
async fn create_timeout_is_validated() {
    for (timeout, message) in [
        (
            Duration::ZERO,
            "invalid configuration: create_timeout = 0ns is out of range: must be 1ms to 300s",
        ),
        (
            Duration::from_secs(301),
            "invalid configuration: create_timeout = 301s is out of range: must be 1ms to 300s",
        ),
    ] {
        let error = Pool::builder().create_timeout(timeout).build().unwrap_err();
        assert_eq!(error.to_string(), message);
    }
    for timeout in [MIN_CREATE_TIMEOUT, MAX_CREATE_TIMEOUT] {
        Pool::builder()
            .create_timeout(timeout)
            .build()
            .unwrap()
            .close()
            .await;
    }
}

#[test]
fn endpoint_urls_are_parsed_whole() {
    let error =
        Endpoint::new("http://127.0.0.1:70000/mcp", TransportKind::StreamableHttp).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"endpoint url "http://127.0.0.1:70000/mcp" has an invalid port "70000": must be a number from 1 to 65535"#
    );
    let file = "[[servers]]\nid = \"a\"\nendpoints = [\n  \
                { url = \"http://127.0.0.1:1/mcp\", transport = \"streamable_http\" },\n  \
                { url = \"http://user:s3cret@127.0.0.1:70000/mcp\", transport = \"sse\" },\n]\n";
    let error = Settings::from_toml("pool.toml", file, env(&[])).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"pool.toml:5:11: servers[0].endpoints[1].url: endpoint url "http://***@127.0.0.1:70000/mcp" has an invalid port "70000": must be a number from 1 to 65535"#
    );
}

#[test]
fn unknown_session_pool_variables_are_warned_about() {
    let vars = [
        ("SESSION_POOL_MAXSIZE", "4"),
        ("SESSION_POOL_ENABLED", "true"),
        ("SESSION_POOLING_ENABLE", "true"),
        ("SESSION_POOL_GOBBLEDYGOOK", "1"),
        ("PATH", "/usr/bin"),
    ];
    let s = Settings::from_vars(
        None::<&str>,
        vars.map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .unwrap();
    assert_eq!(
        s.defaults.max_size, 10,
        "an unknown variable is not applied"
    );
    let warnings: Vec<String> = s.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "SESSION_POOLING_ENABLE is not a variable mcp-pool reads: it is ignored (did you \
             mean SESSION_POOLING_ENABLED?)",
            "SESSION_POOL_GOBBLEDYGOOK is not a variable mcp-pool reads: it is ignored",
            "SESSION_POOL_MAXSIZE is not a variable mcp-pool reads: it is ignored (did you mean \
             SESSION_POOL_MAX_SIZE?)",
        ]
    );
    assert_eq!(
        s.warnings()[2],
        SettingsWarning::UnknownVariable {
            variable: "SESSION_POOL_MAXSIZE".into(),
            suggestion: Some("SESSION_POOL_MAX_SIZE"),
        }
    );
    let known = ENV_VARIABLES.map(|v| (v.to_owned(), String::new()));
    let s = Settings::from_vars(None::<&str>, known).unwrap();
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
}

#[test]
fn a_backend_url_without_its_cache_type_is_warned_about() {
    let secret = "redis://user:hunter2@127.0.0.1:6379/0";
    let s = load(&[("REDIS_URL", secret)]).unwrap();
    assert_eq!(s.backend.cache_type(), "memory");
    let warnings: Vec<String> = s.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "REDIS_URL is set but the state backend is memory (CACHE_TYPE is unset), so it is \
          ignored: set CACHE_TYPE=redis to use it"
        ]
    );
    assert!(!format!("{warnings:?} {:?}", s.warnings()).contains("hunter2"));

    let s = load(&[
        ("CACHE_TYPE", "redis"),
        ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    ])
    .unwrap();
    assert_eq!(s.backend.cache_type(), "redis");
    assert_eq!(
        s.warnings()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "DATABASE_URL is set but the state backend is redis (CACHE_TYPE=redis), so it is \
          ignored: set CACHE_TYPE=database to use it"
        ]
    );

    let s = Settings::from_toml(
        "pool.toml",
        "[settings]\ndatabase_url = \"sqlite:/tmp/state.db\"\n",
        env(&[]),
    )
    .unwrap();
    assert_eq!(
        s.warnings()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "settings.database_url in pool.toml is set but the state backend is memory \
          (CACHE_TYPE is unset), so it is ignored: set CACHE_TYPE=database to use it"
        ]
    );
    assert!(load(&[]).unwrap().warnings().is_empty());
}

const FILE: &str = r#"
[settings]
pooled_servers = ["github"]
user_limit = 4
cleanup_interval = 30

[pool]
enabled = true
max_size = 6
strategy = "least_connections"

[[servers]]
id = "github"
endpoints = [
  { url = "http://127.0.0.1:1/mcp", transport = "streamable_http", weight = 2 },
  { url = "http://127.0.0.1:2/mcp", transport = "streamable_http" },
]

[[servers]]
id = "search"
endpoints = [{ url = "http://127.0.0.1:3/mcp", transport = "streamable_http" }]

[[servers]]
id = "stateful"
endpoints = [{ url = "http://127.0.0.1:4/mcp", transport = "streamable_http" }]
pool = { enabled = true, strategy = "sticky", max_size = 2, size = 2 }
"#;

#[test]
fn a_file_defines_servers_endpoints_and_per_server_overrides() {
    let s = Settings::from_toml("pool.toml", FILE, env(&[])).unwrap();
    assert_eq!(s.user_limit, 4);
    assert_eq!(s.cleanup_interval, Duration::from_secs(30));
    let [github, search, stateful] = &s.servers[..] else {
        panic!("three servers")
    };
    assert_eq!(github.endpoints().len(), 2);
    assert_eq!(github.endpoints()[0].weight, 2);
    assert!(github.pool_config().enabled);
    assert_eq!(
        github.pool_config().strategy,
        StrategyKind::LeastConnections
    );
    assert!(!search.pool_config().enabled, "not in pooled_servers");
    assert!(
        stateful.pool_config().enabled,
        "its own override wins over pooled_servers"
    );
    assert_eq!(stateful.pool_config().strategy, StrategyKind::Sticky);
    assert_eq!(stateful.pool_config().max_size, 2);
}

#[test]
fn a_server_sets_its_call_timeout_and_client_capabilities() {
    let file = r#"
[[servers]]
id = "notebook"
endpoints = [{ url = "http://127.0.0.1:9/mcp", transport = "streamable_http" }]
call_timeout = 120
client_capabilities = ["sampling", "roots"]
"#;
    let s = Settings::from_toml("pool.toml", file, env(&[])).unwrap();
    let server = &s.servers[0];
    assert_eq!(server.configured_call_timeout(), Duration::from_secs(120));
    let capabilities = server.configured_client_capabilities().unwrap();
    assert!(capabilities.sampling.is_some() && capabilities.roots.is_some());
    assert!(capabilities.elicitation.is_none());

    let error = Settings::from_toml(
        "pool.toml",
        &file.replace("call_timeout = 120", "call_timeout = 0"),
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("servers[0].call_timeout = 0 is out of range: must be 1 to 3600 seconds"),
        "{error}"
    );
    let error = Settings::from_toml(
        "pool.toml",
        &file.replace("\"roots\"", "\"telepathy\""),
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("servers[0].client_capabilities"), "{error}");
}

#[test]
fn the_environment_overrides_the_file() {
    let s = Settings::from_toml(
        "pool.toml",
        FILE,
        env(&[
            ("SESSION_POOL_STRATEGY", "weighted"),
            ("SESSION_POOLING_SERVERS", "search"),
        ]),
    )
    .unwrap();
    assert_eq!(s.defaults.strategy, StrategyKind::Weighted);
    assert!(
        !s.servers[0].pool_config().enabled,
        "github is no longer listed"
    );
    assert!(s.servers[1].pool_config().enabled);
    assert_eq!(
        s.servers[2].pool_config().strategy,
        StrategyKind::Sticky,
        "per-server wins"
    );
    let off =
        Settings::from_toml("pool.toml", FILE, env(&[("SESSION_POOL_ENABLED", "false")])).unwrap();
    assert!(!off.servers[0].pool_config().enabled);
    assert!(
        off.servers[2].pool_config().enabled,
        "enabled regardless of the global default"
    );
}

/// Two servers, the second one's `pool` table holding `pool`.
fn two_servers(pool: &str) -> String {
    format!(
        "[[servers]]\nid = \"a\"\n\
         endpoints = [{{ url = \"http://127.0.0.1:1/mcp\", transport = \"streamable_http\" }}]\n\
         \n\
         [[servers]]\nid = \"b\"\n\
         endpoints = [{{ url = \"http://127.0.0.1:2/mcp\", transport = \"streamable_http\" }}]\n\
         pool = {{ {pool} }}\n"
    )
}

#[test]
fn a_bad_file_is_rejected_whole_with_line_column_and_field_path() {
    let cases = [
        // A type error, named by its path in the file.
        (
            two_servers("max_size = \"four\""),
            r#"pool.toml:8:21: servers[1].pool.max_size: invalid type: string "four", expected u32 (must be a whole number from 1 to 1000)"#,
        ),
        // A range error found after parsing: the file's field, not SESSION_POOL_MAX_SIZE.
        (
            two_servers("max_size = 2000"),
            "pool.toml:8:21: servers[1].pool.max_size = 2000 is out of range: must be 1 to 1000",
        ),
        (
            "[pool]\nmax_sise = 3\n".into(),
            "pool.toml:2:1: pool.max_sise: unknown field `max_sise`, expected one of `enabled`, \
             `strategy`, `size`, `min_size`, `max_size`, `timeout`, `max_idle_time`, \
             `max_lifetime`, `session_concurrency`, `auto_scale`, `health_check_interval`, \
             `health_check_threshold`, `rebalance_interval`",
        ),
        (
            "[pool]\nstrategy = \"Fastest!\"\n".into(),
            "pool.toml:2:12: pool.strategy: strategy = \"Fastest!\" is invalid: must be one of \
             round_robin, least_connections, sticky, weighted, none, peak_ewma, or the name of a \
             strategy registered with PoolBuilder::strategy",
        ),
        (
            "[pool]\ntimeout = 0\n".into(),
            "pool.toml:2:11: pool.timeout = 0 is out of range: must be 1 to 300 seconds",
        ),
        (
            "[pool]\nhealth_check_threshold = 300\n".into(),
            "pool.toml:2:26: pool.health_check_threshold: invalid value: integer `300`, expected \
             u8 (must be a whole number from 0 to 100 %)",
        ),
        (
            "[settings]\nuser_limit = 0\n".into(),
            "pool.toml:2:14: settings.user_limit = 0 is out of range: must be 1 to 100000",
        ),
        (
            "[settings]\npooled_servers = [\"ok\", \"b c\"]\n".into(),
            "pool.toml:2:25: settings.pooled_servers[1]: invalid server id \"b c\": must be 1 to \
             128 characters from [a-zA-Z0-9_-]",
        ),
        (
            "[settings]\ncache_type = \"memcached\"\n".into(),
            "pool.toml:2:14: settings.cache_type = \"memcached\" is invalid: must be one of \
             memory, redis, database",
        ),
        (
            "[settings]\ncache_type = \"redis\"\n".into(),
            "pool.toml:2:14: settings.cache_type = \"redis\" needs settings.redis_url (or \
             REDIS_URL), e.g. redis://127.0.0.1:6379/0",
        ),
        (
            "[pool\nenabled = true\n".into(),
            "pool.toml:1:6: unclosed table, expected `]`",
        ),
        (
            "[[servers]]\nid = \"a:b\"\nendpoints = []\n".into(),
            "pool.toml:2:6: servers[0].id: invalid server id \"a:b\": must be 1 to 128 \
             characters from [a-zA-Z0-9_-]",
        ),
        (
            "[[servers]]\nid = \"a\"\nendpoints = []\n".into(),
            "pool.toml:3:13: servers[0].endpoints: a server needs at least one endpoint",
        ),
        (
            "[[servers]]\nid = \"a\"\n".into(),
            "pool.toml:1:1: servers[0]: missing field `endpoints`",
        ),
        (
            "[[servers]]\nid = \"a\"\nendpoints = [{ url = \"ws://x/mcp\", transport = \"sse\" }]\n"
                .into(),
            "pool.toml:3:22: servers[0].endpoints[0].url: endpoint url \"ws://x/mcp\" does not \
             fit transport sse: expected a URL starting with http:// or https://",
        ),
        (
            "[[servers]]\nid = \"a\"\nendpoints = [{ url = \"http://x/mcp\", transport = \"streamable_http\", lifecycle = \"handshake\" }]\n"
                .into(),
            "pool.toml:3:81: servers[0].endpoints[0].lifecycle: unknown variant `handshake`, \
             expected one of `initialize`, `discover`, `auto`",
        ),
        (
            "[[servers]]\nid = \"a\"\nendpoints = [{ url = \"http://x/sse\", transport = \"sse\", lifecycle = \"discover\" }]\n"
                .into(),
            "pool.toml:3:69: servers[0].endpoints[0].lifecycle: lifecycle discover does not fit \
             transport sse: it speaks only initialize (protocol 2024-11-05); use streamable_http \
             for discover or auto",
        ),
        (
            two_servers("").replace("id = \"b\"", "id = \"a\""),
            "pool.toml:6:6: servers[1].id: server a is defined twice (also servers[0].id)",
        ),
    ];
    for (text, message) in cases {
        let error = Settings::from_toml("pool.toml", &text, env(&[])).unwrap_err();
        assert_eq!(error.to_string(), message, "{text:?}");
    }
    let error =
        Settings::from_toml("pool.toml", &two_servers("max_size = 2000"), env(&[])).unwrap_err();
    let SettingsError::FileField {
        path,
        line,
        column,
        field,
        ..
    } = error
    else {
        panic!("{error:?}")
    };
    assert_eq!(
        (path.as_str(), line, column, field.as_str()),
        ("pool.toml", 8, 21, "servers[1].pool.max_size")
    );
}

#[tokio::test]
async fn a_pool_built_from_settings_serves_the_files_servers() {
    let upstream = ReferenceServer::start().await.unwrap();
    let file = format!(
        "[pool]\nenabled = true\n[[servers]]\nid = \"reference\"\nendpoints = [{{ url = \"{}\", transport = \"streamable_http\" }}]\n",
        upstream.url()
    );
    let settings = Settings::from_toml("pool.toml", &file, env(&[])).unwrap();
    let pool = settings.builder().build().unwrap();
    let id = server_id("reference");
    let lease = pool.acquire(&id, Principal::user("u")).await.unwrap();
    assert_eq!(
        text(&lease.call_tool(echo("from a file")).await.unwrap()),
        "from a file"
    );
}
