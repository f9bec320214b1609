//! Passwords in backend URLs stay out of `Debug`, errors and logs.

use std::time::Duration;

use mcp_pool_backends::BackendConfig;

const PASSWORD: &str = "hunter2";

/// `url` with user `user` (unless it names one) and password [`PASSWORD`].
fn with_password(url: &str) -> String {
    let start = url.find("://").expect("a URL with a scheme") + 3;
    let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => {
            let user = url[start..start + at].split(':').next().unwrap_or_default();
            format!("{}{user}:{PASSWORD}{}", &url[..start], &url[start + at..])
        }
        None => format!("{}user:{PASSWORD}@{}", &url[..start], &url[start..]),
    }
}

/// The error, its `Debug`, and every error of its source chain.
fn everything_printed(error: &dyn std::error::Error) -> String {
    let mut out = format!("{error} | {error:?}");
    let mut source = error.source();
    while let Some(e) = source {
        out += &format!(" | {e} | {e:?}");
        source = e.source();
    }
    out
}

fn assert_no_password(text: &str) {
    assert!(!text.contains(PASSWORD), "the password was printed: {text}");
}

/// A connect to `url` that must fail (at once, or at the first `ping`) without the password
/// in the backend's `Debug` or anywhere in the error chain.
#[cfg(any(feature = "redis", feature = "postgres"))]
async fn assert_fails_without_password<B: std::fmt::Debug>(
    url: &str,
    connected: Result<B, mcp_pool_traits::BackendError>,
    ping: impl AsyncFnOnce(&B) -> Result<(), mcp_pool_traits::BackendError>,
) {
    let error = match connected {
        Ok(backend) => {
            assert_no_password(&format!("{backend:?}"));
            ping(&backend).await.expect_err(&format!("{url} must fail"))
        }
        Err(error) => error,
    };
    assert_no_password(&everything_printed(&error));
}

#[test]
fn urls_in_debug_and_selection_errors_are_redacted() {
    assert_eq!(
        with_password("redis://127.0.0.1:6379"),
        "redis://user:hunter2@127.0.0.1:6379"
    );
    assert_eq!(
        with_password("postgres://postgres@h:5432/test"),
        "postgres://postgres:hunter2@h:5432/test"
    );
    let redis = format!("redis://user:{PASSWORD}@127.0.0.1:6379");
    let database = format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432/test");
    let mut shown = String::new();
    #[cfg(feature = "redis")]
    {
        shown += &format!("{:?}", mcp_pool_backends::RedisConfig::new(redis.clone()));
    }
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    {
        shown += &format!(
            "{:?}",
            mcp_pool_backends::DatabaseConfig::new(database.clone())
        );
    }
    shown += &format!(
        "{:?}{:?}",
        BackendConfig::Redis { url: redis },
        BackendConfig::Database { url: database }
    );
    assert_no_password(&shown);
    assert!(shown.contains("***@127.0.0.1:6379"), "{shown}");
    assert!(shown.contains("***@127.0.0.1:5432/test"), "{shown}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn failing_redis_connects_print_and_log_no_password() {
    use mcp_pool_backends::{RedisBackend, RedisConfig};
    let logs = mcp_pool_conformance::logs::capture();
    let mut urls = vec![
        format!("redis://user:{PASSWORD}@127.0.0.1:1"),
        format!("redis://user:{PASSWORD}@127.0.0.1:notaport"),
    ];
    // A live server refusing the credentials.
    if let Some(url) =
        mcp_pool_conformance::backend::service_url(mcp_pool_conformance::backend::REDIS_URL_VAR)
    {
        urls.push(with_password(&url));
    }
    for url in urls {
        let config = RedisConfig::new(url.clone()).operation_timeout(Duration::from_millis(500));
        assert_fails_without_password(&url, RedisBackend::connect(config).await, async |b| {
            b.ping().await
        })
        .await;
    }
    assert_no_password(&logs.text());
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn failing_postgres_connects_print_and_log_no_password() {
    use mcp_pool_backends::{DatabaseBackend, DatabaseConfig};
    let logs = mcp_pool_conformance::logs::capture();
    let mut urls = vec![
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/test"),
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/test"),
    ];
    // A live server: a database that does not exist.
    if let Some(url) =
        mcp_pool_conformance::backend::service_url(mcp_pool_conformance::backend::DATABASE_URL_VAR)
    {
        let url = with_password(&url);
        let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
        urls.push(format!("{base}/no_such_database_mcp_pool"));
    }
    for url in urls {
        let config = DatabaseConfig::new(url.clone()).operation_timeout(Duration::from_millis(500));
        assert_fails_without_password(&url, DatabaseBackend::connect(config).await, async |b| {
            b.ping().await
        })
        .await;
    }
    assert_no_password(&logs.text());
}
