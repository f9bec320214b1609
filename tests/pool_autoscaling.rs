//! The autoscaler on tokio's paused clock with the in-process reference server: a key's target
//! size grows to `max_size` under a burst of slow calls, never above it, and shrinks back to
//! `min_size` after the burst, its idle sessions above the target closed.

mod common;

use std::time::Duration;

use common::*;
use mcp_pool::{Pool, PoolConfig, Principal};

#[tokio::test(start_paused = true)]
async fn the_autoscaler_grows_under_a_burst_and_shrinks_back_after_it() {
    let config = PoolConfig {
        min_size: 2,
        size: 2,
        max_size: 16,
        auto_scale: true,
        rebalance_interval: Duration::from_secs(60),
        timeout: Duration::from_secs(300),
        ..PoolConfig::enabled()
    };
    let (pool, id, _transport) = duplex_pool(config, Pool::builder().user_limit(100));
    let user = Principal::user("u");
    drop(pool.acquire(&id, user).await.unwrap());
    let key = |pool: &Pool| pool.stats().servers[0].keys[0].clone();
    assert_eq!(key(&pool).target_size, 2);

    // 64 concurrent slow calls, for about four rebalance intervals.
    let burst: Vec<_> = (0..64)
        .map(|_| {
            let (pool, id) = (pool.clone(), id.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    let lease = pool.acquire(&id, user).await.unwrap();
                    lease.call_tool(sleep_for(20_000)).await.unwrap();
                }
            })
        })
        .collect();
    let mut peak_target = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let k = key(&pool);
        assert!(k.sessions_total <= 16, "never above max_size");
        peak_target = peak_target.max(k.target_size);
    }
    for task in burst {
        task.await.unwrap();
    }
    assert_eq!(
        peak_target, 16,
        "the target grew to max_size under the burst"
    );

    // After the burst the target shrinks step by step and idle sessions above it close.
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    let k = key(&pool);
    assert_eq!(k.target_size, 2);
    assert_eq!(k.sessions_total, 2);
}
