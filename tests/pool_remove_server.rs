//! `Pool::remove_server` (behind the gateway's `DELETE /servers/{id}`): the server is
//! forgotten at once, its idle sessions close upstream, a leased one closes on release, and
//! adding it again serves afresh.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{PoolError, Principal, ServerConfig};
use mcp_pool_conformance::ReferenceServer;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_is_drained_and_unknown() {
    let upstream = ReferenceServer::start().await.unwrap();
    let (pool, id) = http_pool(&upstream, pooled(4));
    let (alice, bob) = (Principal::user("alice"), Principal::user("bob"));
    let idle = pool.acquire(&id, alice).await.unwrap();
    idle.call_tool(echo("idle")).await.unwrap();
    drop(idle);
    let leased = pool.acquire(&id, bob).await.unwrap();
    upstream.wait_sessions_alive(2, WAIT).await.unwrap();

    pool.remove_server(&id).unwrap();
    assert!(
        pool.stats().servers.iter().all(|s| s.server != id),
        "stats still list the removed server"
    );
    assert!(
        matches!(pool.acquire(&id, alice).await, Err(PoolError::UnknownServer(s)) if s == id),
        "an acquire after the removal must fail with UnknownServer"
    );
    upstream
        .wait_sessions_alive(1, WAIT)
        .await
        .expect("the idle session closes upstream at once");
    leased
        .call_tool(echo("still mine"))
        .await
        .expect("a lease out keeps working until released");
    drop(leased);
    upstream
        .wait_sessions_alive(0, WAIT)
        .await
        .expect("the leased session closes upstream on release");
    assert!(matches!(
        pool.remove_server(&id),
        Err(PoolError::UnknownServer(_))
    ));

    pool.add_server(ServerConfig::new(id.clone(), upstream.endpoint()).pool(pooled(4)))
        .unwrap();
    let again = pool.acquire(&id, alice).await.unwrap();
    assert_eq!(text(&again.call_tool(echo("back")).await.unwrap()), "back");
    assert_eq!(
        upstream.sessions_opened(),
        3,
        "a re-added server opens a new session"
    );
}
