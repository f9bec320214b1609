//! Configuration from the environment and a TOML file.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use mcp_pool::{Principal, Settings, SettingsError, StrategyKind};
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
fn defaults_are_the_seed_guides() {
    let s = load(&[]).unwrap();
    assert!(!s.defaults.enabled);
    assert_eq!(s.defaults.strategy, StrategyKind::RoundRobin);
    assert_eq!(s.user_limit, 10);
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
            "random",
            "SESSION_POOL_STRATEGY=\"random\" is invalid: must be one of round_robin",
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
    let error = load(&[
        ("SESSION_POOL_MIN_SIZE", "8"),
        ("SESSION_POOL_MAX_SIZE", "4"),
    ])
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("min_size (8) <= size (5) <= max_size (4)"),
        "{error}"
    );
}

#[test]
fn pool_size_alone_raises_max_size() {
    let s = load(&[("SESSION_POOL_SIZE", "20")]).unwrap();
    assert_eq!((s.defaults.size, s.defaults.max_size), (20, 20));
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

#[test]
fn a_bad_file_is_rejected_whole_with_the_field() {
    let cases = [
        ("[pool]\nmax_sise = 3\n", "unknown field `max_sise`"),
        (
            "[pool]\nstrategy = \"fastest\"\n",
            "unknown variant `fastest`",
        ),
        (
            "[pool]\ntimeout = 0\n",
            "timeout = 0 is out of range: must be 1 to 300 seconds",
        ),
        (
            "[[servers]]\nid = \"a:b\"\nendpoints = []\n",
            "invalid server id \"a:b\"",
        ),
        (
            "[[servers]]\nid = \"a\"\nendpoints = [{ url = \"ws://x/mcp\", transport = \"sse\" }]\n",
            "does not fit transport sse",
        ),
        (
            "[[servers]]\nid = \"a\"\nendpoints = [{ url = \"http://x/mcp\", transport = \"streamable_http\" }]\npool = { max_size = 2000 }\n",
            "server a: invalid configuration: max_size = 2000 is out of range",
        ),
        (
            "[settings]\nuser_limit = 0\n",
            "user_limit = 0 is out of range",
        ),
    ];
    for (text, message) in cases {
        let error = Settings::from_toml("pool.toml", text, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains(message), "{text:?}: {error}");
    }
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
