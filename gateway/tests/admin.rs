//! The Admin UI's routes in process (`oneshot`): the page and its versioned assets are served
//! without auth and with their cache headers; the API they call still requires the token; the
//! health view the dashboard reads carries each endpoint's circuit and never a secret.

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use mcp_pool::{Pool, PoolConfig, ServerConfig, ServerId};
use mcp_pool_conformance::ReferenceServer;
use mcp_pool_gateway::{AppState, Auth, Registry, admin, auth};
use serde_json::Value;
use tower::ServiceExt;

const SECRET: &str = "admin-ui-test-secret-0123456789-abcdef";

async fn app() -> (ReferenceServer, Router) {
    let upstream = ReferenceServer::start().await.unwrap();
    let url = upstream.url().replace("http://", "http://alice:hunter2pw@");
    let endpoint = mcp_pool::Endpoint::new(url, mcp_pool::TransportKind::StreamableHttp).unwrap();
    let servers =
        [ServerConfig::new(ServerId::new("up").unwrap(), endpoint).pool(PoolConfig::enabled())];
    let pool = Pool::builder().server(servers[0].clone()).build().unwrap();
    let registry = Registry::load(pool.clone(), &servers).await.unwrap();
    let app = mcp_pool_gateway::router(AppState::new(
        pool,
        registry,
        Auth::Required(auth::JwtSecret::new(SECRET).unwrap().into()),
    ));
    (upstream, app)
}

async fn get(
    app: &Router,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, header::HeaderMap, String) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn the_page_is_no_cache_and_names_its_versioned_assets() {
    let (_upstream, app) = app().await;
    for path in ["/admin", "/admin/"] {
        let (status, headers, body) = get(&app, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert!(body.contains(&format!("/admin/assets/{}/admin.js", *admin::VERSION)));
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let revalidated = app
            .clone()
            .oneshot(
                Request::get(path)
                    .header(header::IF_NONE_MATCH, &etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
}

#[tokio::test]
async fn assets_of_this_version_are_immutable_and_others_are_404() {
    let (_upstream, app) = app().await;
    let v = &*admin::VERSION;
    for (file, kind) in [
        ("admin.js", "text/javascript"),
        ("admin.css", "text/css"),
        ("uPlot.iife.min.js", "text/javascript"),
        ("uPlot.min.css", "text/css"),
    ] {
        let (status, headers, body) = get(&app, &format!("/admin/assets/{v}/{file}"), None).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{file}"
        );
        assert!(!body.is_empty());
    }
    let gzipped = app
        .clone()
        .oneshot(
            Request::get(format!("/admin/assets/{v}/uPlot.iife.min.js"))
                .header(header::ACCEPT_ENCODING, "gzip")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
    let (status, _, body) = get(&app, "/admin/assets/0000000000000000/admin.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("detail"));
    let (status, _, _) = get(&app, &format!("/admin/assets/{v}/secrets.txt"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_api_behind_the_page_still_requires_the_token() {
    let (_upstream, app) = app().await;
    let (status, headers, _) = get(&app, "/servers/pools/health", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn the_health_view_carries_each_endpoints_circuit_and_no_password() {
    let (_upstream, app) = app().await;
    let token = auth::mint(
        &auth::JwtSecret::new(SECRET).unwrap(),
        "admin",
        auth::Role::Admin,
        std::time::Duration::from_secs(60),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let (status, _, body) = get(&app, "/servers/pools/health", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("hunter2pw"), "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    let up = &health[0];
    assert_eq!(up["server_id"], "up");
    assert_eq!(up["hit_rate"], 0.0);
    assert_eq!(up["endpoints"][0]["circuit"], "closed");
    assert_eq!(up["endpoints"][0]["status"], "unknown");
    assert!(up["endpoints"][0]["url"].as_str().unwrap().contains("***@"));
}

#[tokio::test]
async fn the_password_sign_in_mints_a_token_for_the_right_pair_only() {
    let (_upstream, app) = app().await;
    let secret = auth::JwtSecret::new(SECRET).unwrap();
    let login =
        admin::AdminLogin::from_vars(Some("ops".into()), Some("correct horse battery".into()))
            .unwrap()
            .unwrap();
    assert!(!format!("{login:?}").contains("horse"), "{login:?}");
    let app = app.merge(admin::login_routes(login, secret.clone()));
    let post = |body: &'static str| {
        app.clone().oneshot(
            Request::post("/admin/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
    };
    let ok = post(r#"{"username": "ops", "password": "correct horse battery"}"#)
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let answer: admin::LoginAnswer =
        serde_json::from_slice(&ok.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer.token_type, "bearer");
    assert_eq!(answer.expires_in, 3600);
    let claims = auth::verify(&secret, &answer.access_token).unwrap();
    assert_eq!(claims.user(), Some("ops"));
    assert_eq!(
        claims.role(),
        auth::Role::Admin,
        "the operator's sign-in is an admin's"
    );
    let (status, _, _) = get(&app, "/servers", Some(&answer.access_token)).await;
    assert_eq!(status, StatusCode::OK, "the minted token opens the API");
    for wrong in [
        r#"{"username": "ops", "password": "correct horse battery!"}"#,
        r#"{"username": "ops", "password": "correct horse batter"}"#,
        r#"{"username": "root", "password": "correct horse battery"}"#,
    ] {
        let refused = post(wrong).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{wrong}");
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("Wrong username or password") && !body.contains("horse"),
            "{body}"
        );
    }
}

#[test]
fn the_password_sign_in_is_configured_by_both_variables_or_neither() {
    let some = |v: &str| Some(v.to_owned());
    assert!(admin::AdminLogin::from_vars(None, None).unwrap().is_none());
    let e = admin::AdminLogin::from_vars(some("ops"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ADMIN_PASSWORD"), "{e}");
    let e = admin::AdminLogin::from_vars(None, some("correct horse battery"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ADMIN_USERNAME") && !e.contains("horse"), "{e}");
    let e = admin::AdminLogin::from_vars(some("ops"), some("short"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("12 characters") && !e.contains("short"), "{e}");
}
