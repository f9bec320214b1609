//! The statements both database dialects share. `{now}` stands for the dialect's clock in
//! milliseconds since the Unix epoch, read by the database itself so that every worker uses one
//! clock; parameters are `$N` (PostgreSQL's form, which sqlx also accepts for SQLite).

/// The statements on one kind of versioned record, with `{records}`, `{versions}` and
/// `{value}` replaced by its tables and value column.
#[derive(Debug)]
pub(super) struct RecordSql {
    pub(super) version: String,
    pub(super) put: String,
    pub(super) get: String,
    pub(super) list: String,
    pub(super) delete: String,
}

impl RecordSql {
    fn new(records: &str, versions: &str, value: &str) -> Self {
        let f = |s: &str| {
            s.replace("{records}", records)
                .replace("{versions}", versions)
                .replace("{value}", value)
        };
        Self {
            version: f(RECORD_VERSION),
            put: f(RECORD_PUT),
            get: f(RECORD_GET),
            list: f(RECORD_LIST),
            delete: f(RECORD_DELETE),
        }
    }
}

/// Every statement, with `{now}` replaced for one dialect.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) configs: RecordSql,
    pub(super) servers: RecordSql,
    pub(super) claim_state: String,
    pub(super) claim_write: String,
    pub(super) refresh: String,
    pub(super) release: String,
    pub(super) owner: String,
    pub(super) heartbeat: String,
    pub(super) is_alive: String,
    pub(super) slot_prune: String,
    pub(super) slot_take: String,
    pub(super) slot_release: String,
    pub(super) slot_count: String,
    pub(super) sweep: [String; 3],
}

impl Sql {
    pub(super) fn new(now: &str) -> Self {
        let f = |s: &str| s.replace("{now}", now);
        Self {
            configs: RecordSql::new("mcp_pool_configs", "mcp_pool_config_versions", "config"),
            servers: RecordSql::new("mcp_pool_servers", "mcp_pool_server_versions", "record"),
            claim_state: f(CLAIM_STATE),
            claim_write: f(CLAIM_WRITE),
            refresh: f(REFRESH),
            release: f(RELEASE),
            owner: f(OWNER),
            heartbeat: f(HEARTBEAT),
            is_alive: f(IS_ALIVE),
            slot_prune: f(SLOT_PRUNE),
            slot_take: f(SLOT_TAKE),
            slot_release: f(SLOT_RELEASE),
            slot_count: f(SLOT_COUNT),
            sweep: SWEEP.map(f),
        }
    }
}

/// The tables, shared by both dialects (PostgreSQL adds `mcp_pool_messages`). Times are
/// milliseconds since the Unix epoch; `tracked` records whether the owner had a live heartbeat
/// when it claimed or refreshed (only then does its heartbeat running out end the claim).
/// `mcp_pool_config_versions` holds the version of each server's latest config put or delete
/// and keeps it after a delete (the tombstone `list_configs` reports); a config stored before
/// that table existed counts as version 0 until its next write. `mcp_pool_servers` and
/// `mcp_pool_server_versions` do the same for server records (JSON).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mcp_pool_configs (
    namespace TEXT NOT NULL, server TEXT NOT NULL, config TEXT NOT NULL,
    PRIMARY KEY (namespace, server));
CREATE TABLE IF NOT EXISTS mcp_pool_config_versions (
    namespace TEXT NOT NULL, server TEXT NOT NULL, version BIGINT NOT NULL,
    PRIMARY KEY (namespace, server));
CREATE TABLE IF NOT EXISTS mcp_pool_servers (
    namespace TEXT NOT NULL, server TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (namespace, server));
CREATE TABLE IF NOT EXISTS mcp_pool_server_versions (
    namespace TEXT NOT NULL, server TEXT NOT NULL, version BIGINT NOT NULL,
    PRIMARY KEY (namespace, server));
CREATE TABLE IF NOT EXISTS mcp_pool_claims (
    namespace TEXT NOT NULL, session TEXT NOT NULL, owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL, tracked BOOLEAN NOT NULL,
    PRIMARY KEY (namespace, session));
CREATE TABLE IF NOT EXISTS mcp_pool_heartbeats (
    namespace TEXT NOT NULL, worker TEXT NOT NULL, expires_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, worker));
CREATE TABLE IF NOT EXISTS mcp_pool_slots (
    namespace TEXT NOT NULL, counter TEXT NOT NULL, slot TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, counter, slot));
";

// $1 namespace, $2 server. The server's next version, run in the transaction of the put or
// delete it numbers (under the server's lock).
const RECORD_VERSION: &str = "
INSERT INTO {versions} (namespace, server, version) VALUES ($1, $2, 1)
ON CONFLICT (namespace, server) DO UPDATE SET version = {versions}.version + 1
RETURNING version";
// $1 namespace, $2 server, $3 value JSON.
const RECORD_PUT: &str = "
INSERT INTO {records} (namespace, server, {value}) VALUES ($1, $2, $3)
ON CONFLICT (namespace, server) DO UPDATE SET {value} = excluded.{value}";
// $1 namespace, $2 server. The value and its version.
const RECORD_GET: &str = "
SELECT c.{value}, COALESCE(v.version, 0) FROM {records} c
LEFT JOIN {versions} v ON v.namespace = c.namespace AND v.server = c.server
WHERE c.namespace = $1 AND c.server = $2";
// $1 namespace. Every versioned server (its value, NULL when deleted), then the values
// stored before versions existed, as version 0. One statement: one snapshot.
const RECORD_LIST: &str = "
SELECT v.server, c.{value}, v.version FROM {versions} v
LEFT JOIN {records} c ON c.namespace = v.namespace AND c.server = v.server
WHERE v.namespace = $1
UNION ALL
SELECT c.server, c.{value}, 0 FROM {records} c
WHERE c.namespace = $1 AND NOT EXISTS (SELECT 1 FROM {versions} v
                                       WHERE v.namespace = $1 AND v.server = c.server)";
const RECORD_DELETE: &str = "DELETE FROM {records} WHERE namespace = $1 AND server = $2";

// $1 namespace, $2 session, $3 caller. One row: the clock, the live claim (if any) and whether
// its owner and the caller have live heartbeats.
const CLAIM_STATE: &str = "
WITH n AS (SELECT {now} AS now)
SELECT n.now AS now, c.owner AS owner, c.tracked AS tracked,
    EXISTS (SELECT 1 FROM mcp_pool_heartbeats h
            WHERE h.namespace = $1 AND h.worker = c.owner AND h.expires_at > n.now) AS owner_alive,
    EXISTS (SELECT 1 FROM mcp_pool_heartbeats h
            WHERE h.namespace = $1 AND h.worker = $3 AND h.expires_at > n.now) AS caller_alive
FROM n LEFT JOIN mcp_pool_claims c
    ON c.namespace = $1 AND c.session = $2 AND c.expires_at > n.now";

// $1 namespace, $2 session, $3 owner, $4 expires_at, $5 tracked.
const CLAIM_WRITE: &str = "
INSERT INTO mcp_pool_claims (namespace, session, owner, expires_at, tracked)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (namespace, session) DO UPDATE
SET owner = excluded.owner, expires_at = excluded.expires_at, tracked = excluded.tracked";

// $1 namespace, $2 session, $3 owner, $4 TTL ms.
const REFRESH: &str = "
UPDATE mcp_pool_claims SET expires_at = {now} + $4,
    tracked = EXISTS (SELECT 1 FROM mcp_pool_heartbeats h
                      WHERE h.namespace = $1 AND h.worker = $3 AND h.expires_at > {now})
WHERE namespace = $1 AND session = $2 AND owner = $3 AND expires_at > {now}";

// $1 namespace, $2 session, $3 owner.
const RELEASE: &str = "
DELETE FROM mcp_pool_claims
WHERE namespace = $1 AND session = $2 AND owner = $3 AND expires_at > {now}";

// $1 namespace, $2 session. The owner, unless the claim expired or its owner's heartbeat ran out.
const OWNER: &str = "
SELECT c.owner FROM mcp_pool_claims c
WHERE c.namespace = $1 AND c.session = $2 AND c.expires_at > {now}
  AND (NOT c.tracked OR EXISTS (SELECT 1 FROM mcp_pool_heartbeats h
                                WHERE h.namespace = $1 AND h.worker = c.owner
                                  AND h.expires_at > {now}))";

// $1 namespace, $2 worker, $3 TTL ms.
const HEARTBEAT: &str = "
INSERT INTO mcp_pool_heartbeats (namespace, worker, expires_at) VALUES ($1, $2, {now} + $3)
ON CONFLICT (namespace, worker) DO UPDATE SET expires_at = excluded.expires_at";

// $1 namespace, $2 worker.
const IS_ALIVE: &str = "
SELECT EXISTS (SELECT 1 FROM mcp_pool_heartbeats
               WHERE namespace = $1 AND worker = $2 AND expires_at > {now})";

// $1 namespace, $2 counter.
const SLOT_PRUNE: &str = "
DELETE FROM mcp_pool_slots WHERE namespace = $1 AND counter = $2 AND expires_at <= {now}";

// $1 namespace, $2 counter, $3 slot, $4 limit, $5 TTL ms. Run after SLOT_PRUNE under the
// counter's lock, so every row counted is live. One row written = the slot is held.
const SLOT_TAKE: &str = "
INSERT INTO mcp_pool_slots (namespace, counter, slot, expires_at)
SELECT $1, $2, $3, {now} + $5
WHERE EXISTS (SELECT 1 FROM mcp_pool_slots
              WHERE namespace = $1 AND counter = $2 AND slot = $3)
   OR (SELECT COUNT(*) FROM mcp_pool_slots WHERE namespace = $1 AND counter = $2) < $4
ON CONFLICT (namespace, counter, slot) DO UPDATE SET expires_at = excluded.expires_at";

// $1 namespace, $2 counter, $3 slot.
const SLOT_RELEASE: &str = "
DELETE FROM mcp_pool_slots
WHERE namespace = $1 AND counter = $2 AND slot = $3 AND expires_at > {now}";

// $1 namespace, $2 counter.
const SLOT_COUNT: &str = "
SELECT COUNT(*) FROM mcp_pool_slots WHERE namespace = $1 AND counter = $2 AND expires_at > {now}";

// $1 namespace. Drops records whose TTL ran out, so tables do not grow with dead workers.
const SWEEP: [&str; 3] = [
    "DELETE FROM mcp_pool_claims WHERE namespace = $1 AND expires_at <= {now}",
    "DELETE FROM mcp_pool_heartbeats WHERE namespace = $1 AND expires_at <= {now}",
    "DELETE FROM mcp_pool_slots WHERE namespace = $1 AND expires_at <= {now}",
];
