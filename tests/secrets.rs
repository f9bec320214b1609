//! Credentials stay out of everything the pool prints: no header value, user name or URL
//! password in a `Debug`, `Display`, error, log line, metric or stats output, also when a
//! creation fails.

mod common;

use common::*;
use mcp_pool::{AcquireRequest, Pool, ServerConfig};

/// No header value, nor the user, in the `Debug` of the pool, a server config, a request, a
/// lease or the stats.
#[tokio::test(start_paused = true)]
async fn debug_output_carries_no_credential() {
    let (pool, id, _transport) = duplex_pool(warm(1), Pool::builder());
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
    headers.insert("cookie", "session=c00kie-value".parse().unwrap());
    let request = AcquireRequest::new(&id)
        .headers(&headers)
        .user("alice@example.test");
    let lease = pool.acquire_with(request).await.unwrap();
    let server = ServerConfig::new(id.clone(), http_endpoint("http://127.0.0.1:9/mcp"))
        .headers(headers.clone());
    assert_eq!(server.header_names().count(), 2);
    for text in [
        format!("{pool:?}"),
        format!("{server:?}"),
        format!("{request:?}"),
        format!("{lease:?}"),
        format!("{:?}", pool.stats()),
        serde_json::to_string(&pool.stats()).unwrap(),
    ] {
        for secret in ["s3cr3t-t0ken", "c00kie-value", "alice@example.test"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

/// A token and a URL password appear in no `Debug`, `Display`, error, log line, metric or stats
/// output of the pool, also when a creation fails.
#[tokio::test]
async fn secrets_reach_no_log_error_metric_or_stats() {
    let logs = mcp_pool_conformance::logs::capture();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let id = server_id("guarded");
    // Nothing listens on port 1: the creation fails and is reported.
    let endpoint = http_endpoint("http://alice:pw123hunter@127.0.0.1:1/mcp");
    let pool = Pool::builder()
        .metrics(true)
        .server(ServerConfig::new(id.clone(), endpoint).pool(warm(1)))
        .build()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
    let error = pool
        .acquire_with(AcquireRequest::new(&id).headers(&headers))
        .await
        .unwrap_err();
    let mut outputs = vec![
        error.to_string(),
        format!("{error:?}"),
        format!("{pool:?}"),
        format!("{:?}", pool.stats()),
        serde_json::to_string(&pool.stats()).unwrap(),
        metrics.render(),
    ];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        outputs.push(cause.to_string());
        source = cause.source();
    }
    pool.close().await;
    outputs.push(logs.text());
    assert!(
        outputs.last().is_some_and(|l| !l.is_empty()),
        "something was logged"
    );
    for text in &outputs {
        for secret in ["pw123hunter", "s3cr3t-t0ken"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
