//! `CACHE_TYPE` / `REDIS_URL` / `DATABASE_URL` selection, connected to real services.

use std::time::Duration;

use mcp_pool_backends::{BackendConfig, CACHE_TYPE, DATABASE_URL, REDIS_URL};
use mcp_pool_conformance::backend::{
    DATABASE_URL_VAR, REDIS_URL_VAR, fresh_namespace, service_url,
};
use mcp_pool_traits::StateId;

fn select(cache_type: &str, var: &str, url: &str) -> BackendConfig {
    BackendConfig::from_lookup(|name| match name {
        n if n == CACHE_TYPE => Some(cache_type.to_owned()),
        n if n == var => Some(url.to_owned()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{CACHE_TYPE}={cache_type} {var}={url}: {e}"))
}

/// The selected backend works: a heartbeat through it is seen through a second instance.
async fn assert_works(config: &BackendConfig, name: &str) {
    let ns = fresh_namespace();
    let a = config.connect(ns.clone()).await.unwrap();
    let b = config.connect(ns).await.unwrap();
    assert_eq!(a.name(), name);
    let worker = StateId::new("w").unwrap();
    a.heartbeat(&worker, Duration::from_secs(30)).await.unwrap();
    assert!(
        b.is_alive(&worker).await.unwrap(),
        "{name}: instances share no state"
    );
}

#[tokio::test]
async fn memory_by_default() {
    let config = BackendConfig::from_lookup(|_| None).unwrap();
    assert_eq!(config, BackendConfig::Memory);
    let backend = config.connect(fresh_namespace()).await.unwrap();
    assert_eq!(backend.name(), "memory");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn database_with_a_sqlite_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("state.db").display());
    assert_works(&select("database", DATABASE_URL, &url), "sqlite").await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_with_its_url() {
    let Some(url) = service_url(REDIS_URL_VAR) else {
        return;
    };
    assert_works(&select("redis", REDIS_URL, &url), "redis").await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn database_with_a_postgres_url() {
    let Some(url) = service_url(DATABASE_URL_VAR) else {
        return;
    };
    assert_works(&select("database", DATABASE_URL, &url), "postgres").await;
}
