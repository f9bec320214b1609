//! Reloading the configuration file's servers into a running pool (`SIGHUP`).

use mcp_pool::{Pool, PoolError, ServerConfig};

/// What a [`reload`] changed, by server id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Servers new in the file, added.
    pub added: Vec<String>,
    /// Servers whose connection settings (an endpoint's URL or transport, the endpoint list)
    /// changed: replaced and drained, so no session to the old place is used again.
    pub drained: Vec<String>,
    /// Servers with other changes (pool configuration, weights, call timeout), applied
    /// without closing sessions.
    pub updated: Vec<String>,
    /// Servers no longer in the file: kept (removing a server needs a restart).
    pub kept: Vec<String>,
}

/// Applies the difference between the servers of the file as last loaded (`previous`) and as
/// read now (`next`) to `pool`. Only what changed in the file is applied, so a pool
/// configuration saved through the REST API survives a reload that leaves that server's
/// `pool` table alone. Every server of `next` is validated first: on an error nothing is
/// applied.
///
/// # Errors
/// The first invalid server's [`PoolError`] (nothing applied then), or the error of applying
/// a change (the changes before it stay applied).
pub fn reload(
    pool: &Pool,
    previous: &[ServerConfig],
    next: &[ServerConfig],
) -> Result<Reloaded, PoolError> {
    for server in next {
        server.validate()?;
    }
    let mut done = Reloaded::default();
    for server in next {
        let id = server.id();
        let before = previous.iter().find(|p| p.id() == id);
        let Some(current) = pool.server_config(id) else {
            pool.add_server(server.clone())?;
            done.added.push(id.to_string());
            continue;
        };
        let Some(before) = before else {
            // Known to the pool but not from the file (e.g. `--demo`): the file takes it over.
            replace(pool, server.clone())?;
            done.drained.push(id.to_string());
            continue;
        };
        let same_pool = before.pool_config() == server.pool_config();
        let connection_changed = before.endpoints().len() != server.endpoints().len()
            || before
                .endpoints()
                .iter()
                .zip(server.endpoints())
                .any(|(a, b)| a.url != b.url || a.transport != b.transport);
        let other_changed = before.endpoints() != server.endpoints()
            || before.configured_call_timeout() != server.configured_call_timeout()
            || before.configured_client_capabilities() != server.configured_client_capabilities();
        // An unchanged `pool` table keeps the configuration in force (saved through the API).
        let server = if same_pool {
            server.clone().pool(current)
        } else {
            server.clone()
        };
        if connection_changed {
            replace(pool, server)?;
            done.drained.push(id.to_string());
        } else if other_changed {
            pool.add_server(server)?;
            done.updated.push(id.to_string());
        } else if !same_pool {
            pool.set_pool_config(id, server.pool_config().clone())?;
            done.updated.push(id.to_string());
        }
    }
    for server in previous {
        if !next.iter().any(|n| n.id() == server.id()) {
            done.kept.push(server.id().to_string());
        }
    }
    Ok(done)
}

/// Swaps `server` in and drains its pool: sessions to the old endpoints close (idle ones now,
/// leased ones when released).
fn replace(pool: &Pool, server: ServerConfig) -> Result<(), PoolError> {
    let id = server.id().clone();
    pool.add_server(server)?;
    pool.drain_server(&id)
}
