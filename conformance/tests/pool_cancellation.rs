//! The cancellation matrix (deadpool's `managed_cancellation.rs`, for the pool engine): every
//! combination of how connecting goes (ok, error, slow, hang: `initialize` never answered) × how the tool call on the lease
//! goes (ok, error, slow, hang) × where the task holding the acquire and the lease is aborted
//! (before it runs, while connecting, during the call, after the call before release, or
//! never). After each, on tokio's paused clock (no real sleep):
//! - the key holds at most `max_size` sessions, nothing is being created, nobody waits, no
//!   session is active once the lease is gone;
//! - the duplex transport counts exactly as many sessions alive upstream as the pool holds;
//! - no task panicked;
//! - with connects healthy again, a following acquire succeeds;
//! - after `close()`, nothing is alive upstream.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mcp_pool::{
    Endpoint, Pool, PoolConfig, PoolError, Principal, ServerConfig, ServerId, TransportKind,
    rmcp::model::CallToolRequestParams,
};
use mcp_pool_conformance::DuplexTransport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ok,
    Err,
    Slow,
    Hang,
}

const STEPS: [Step; 4] = [Step::Ok, Step::Err, Step::Slow, Step::Hang];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AbortAt {
    /// Before the task first runs.
    Spawn,
    /// While the acquire is in progress (connecting, for a slow or hanging connect).
    Connect,
    /// While the call is in flight.
    Call,
    /// After the call returned, while the lease is held.
    AfterCall,
    /// Never: the task ends and drops its lease.
    Never,
}

const ABORTS: [AbortAt; 5] = [
    AbortAt::Spawn,
    AbortAt::Connect,
    AbortAt::Call,
    AbortAt::AfterCall,
    AbortAt::Never,
];

/// How far the task got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Started,
    Acquiring,
    Calling,
    Called,
}

const SLOW: Duration = Duration::from_secs(2);
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session whose call was abandoned waits for its probe's answer.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

fn call_params(call: Step) -> CallToolRequestParams {
    let (name, args) = match call {
        Step::Ok | Step::Hang => ("echo", serde_json::json!({ "message": "m" })),
        Step::Err => ("fail", serde_json::json!({})),
        Step::Slow => (
            "sleep",
            serde_json::json!({ "ms": SLOW.as_millis() as u64 }),
        ),
    };
    CallToolRequestParams::new(name).with_arguments(args.as_object().cloned().unwrap_or_default())
}

/// Lets every task run until all are idle (the paused clock moves 1 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Waits (on the paused clock) until the task reached `stage` or ended, for at most 60 s.
async fn reach(stage: &Mutex<Stage>, target: Stage, task: &tokio::task::JoinHandle<()>) {
    for _ in 0..60_000 {
        if *stage.lock().unwrap() >= target || task.is_finished() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn case(connect: Step, call: Step, abort: AbortAt) -> Result<(), String> {
    let transport = DuplexTransport::new(TransportKind::StreamableHttp);
    let server = ServerId::new("cancel").unwrap();
    let pool = Pool::builder()
        .transport(Arc::new(transport.clone()))
        .server(
            ServerConfig::new(
                server.clone(),
                Endpoint::new("http://cancel.invalid/mcp", TransportKind::StreamableHttp).unwrap(),
            )
            .pool(PoolConfig {
                max_size: 1,
                size: 1,
                timeout: Duration::from_secs(30),
                ..PoolConfig::enabled()
            }),
        )
        .create_timeout(CREATE_TIMEOUT)
        .cancel_grace(CANCEL_GRACE)
        .build()
        .map_err(|e| e.to_string())?;
    let principal = Principal::user("cancel");
    transport.set_fail_connects(connect == Step::Err);
    // A hanging connect opens its session upstream and never gets `initialize` answered: the
    // pool must close what it abandons.
    transport.set_hang(connect == Step::Hang);
    transport.set_connect_delay(if connect == Step::Slow {
        SLOW
    } else {
        Duration::ZERO
    });

    let stage = Arc::new(Mutex::new(Stage::Started));
    let task = {
        let (pool, server, stage, transport) = (
            pool.clone(),
            server.clone(),
            stage.clone(),
            transport.clone(),
        );
        tokio::spawn(async move {
            *stage.lock().unwrap() = Stage::Acquiring;
            let lease = match pool.acquire(&server, principal).await {
                Ok(lease) => lease,
                Err(PoolError::Create { .. }) if connect == Step::Err || connect == Step::Hang => {
                    return;
                }
                Err(e) => panic!("acquire failed: {e}"),
            };
            if call == Step::Hang {
                let tag = DuplexTransport::session_of(lease.peer()).expect("a duplex session");
                transport.hang_session(tag, true);
            }
            *stage.lock().unwrap() = Stage::Calling;
            let result = lease.call_tool(call_params(call)).await;
            match (call, &result) {
                (Step::Ok | Step::Slow, Ok(_)) | (Step::Err, Err(_)) => {}
                (Step::Hang, _) => unreachable!("a hung call never returns"),
                (_, other) => panic!("call {call:?} returned {other:?}"),
            }
            *stage.lock().unwrap() = Stage::Called;
            if abort != AbortAt::Never {
                std::future::pending::<()>().await;
            }
        })
    };
    match abort {
        AbortAt::Spawn => task.abort(),
        AbortAt::Connect => {
            reach(&stage, Stage::Acquiring, &task).await;
            settle().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            task.abort();
        }
        AbortAt::Call => {
            reach(&stage, Stage::Calling, &task).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            task.abort();
        }
        AbortAt::AfterCall => {
            reach(&stage, Stage::Called, &task).await;
            task.abort();
        }
        AbortAt::Never => {
            if call == Step::Hang {
                // A hung call never ends: this cell is the same as aborting during the call.
                reach(&stage, Stage::Calling, &task).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                task.abort();
            }
        }
    }
    match task.await {
        Ok(()) => {}
        Err(e) if e.is_cancelled() => {}
        Err(e) => return Err(format!("the task panicked: {e}")),
    }
    // Whatever was started in the background (the probe of a session whose call was
    // abandoned, a creation the aborted acquire or a failed probe left, closes) ends within
    // the cancel grace and the create timeout.
    tokio::time::sleep(CANCEL_GRACE + CREATE_TIMEOUT + Duration::from_secs(1)).await;
    settle().await;
    let stats = pool.stats();
    let sessions: u32 = stats.sessions_total;
    for key in &stats.servers[0].keys {
        if key.sessions_total + key.sessions_creating > 1
            || key.sessions_creating != 0
            || key.waiters != 0
            || key.sessions_active != 0
        {
            return Err(format!(
                "key not settled: {} sessions, {} creating, {} waiters, {} active (max_size 1)",
                key.sessions_total, key.sessions_creating, key.waiters, key.sessions_active
            ));
        }
    }
    let alive = transport.sessions_alive();
    if alive != u64::from(sessions) {
        return Err(format!(
            "{alive} sessions alive upstream, the pool holds {sessions}"
        ));
    }
    // Connects healthy again: the next acquire succeeds.
    transport.set_fail_connects(false);
    transport.set_connect_delay(Duration::ZERO);
    transport.set_hang(false);
    let next = tokio::time::timeout(Duration::from_secs(40), pool.acquire(&server, principal))
        .await
        .map_err(|_| "the following acquire did not end".to_owned())?
        .map_err(|e| format!("the following acquire failed: {e}"))?;
    drop(next);
    tokio::time::timeout(Duration::from_secs(60), pool.close())
        .await
        .map_err(|_| "close() did not return".to_owned())?;
    settle().await;
    let alive = transport.sessions_alive();
    if alive != 0 {
        return Err(format!("{alive} sessions alive upstream after close()"));
    }
    Ok(())
}

#[test]
fn cancellation_matrix() {
    let mut failures = Vec::new();
    for connect in STEPS {
        for call in STEPS {
            for abort in ABORTS {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .unwrap();
                if let Err(e) = runtime.block_on(case(connect, call, abort)) {
                    failures.push(format!(
                        "connect {connect:?}, call {call:?}, abort at {abort:?}: {e}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 80 cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
