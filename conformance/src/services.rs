//! Services outside the test process that some tests need (a Redis, a PostgreSQL, the interop
//! peers: the official MCP SDKs, `@modelcontextprotocol/server-everything`, playwright-core and
//! Chromium), found through environment variables, and the one rule for a missing one: the test
//! prints why it skips (`skipped: …` on stderr) and passes, unless [`REQUIRE_SERVICES_VAR`] is
//! `1` (CI), where it fails instead: a service that should be there is not, and skipping would
//! hide it.
//!
//! ```no_run
//! use mcp_pool_conformance::services;
//!
//! fn a_test_with_the_python_sdk() {
//!     let Some(python) = services::interop_python() else {
//!         return; // skipped, and said why
//!     };
//!     // … start `python` …
//! # let _ = python;
//! }
//! ```

/// Set to `1` to make a missing service fail the tests that need it instead of skipping them.
pub const REQUIRE_SERVICES_VAR: &str = "MCP_POOL_REQUIRE_SERVICES";
/// The Python interpreter of the interop venv: the MCP Python SDK, schemathesis beside it.
pub const INTEROP_PYTHON_VAR: &str = "MCP_POOL_INTEROP_PYTHON";
/// The npm prefix whose `node_modules` holds the MCP TypeScript SDK and server-everything.
pub const INTEROP_NODE_DIR_VAR: &str = "MCP_POOL_INTEROP_NODE_DIR";
/// The npm prefix whose `node_modules` holds playwright-core.
pub const BROWSER_DIR_VAR: &str = "MCP_POOL_BROWSER_DIR";
/// The Chromium executable playwright-core drives (Debian's `chromium`).
pub const CHROMIUM_VAR: &str = "MCP_POOL_CHROMIUM";

/// How the interop variables get set.
const INTEROP_SETUP: &str =
    "run `bash interop/setup.sh` and export it as it says (.ci/run does both)";

/// Whether a missing service fails the test: [`REQUIRE_SERVICES_VAR`] is `1`.
pub fn required() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v.trim() == "1")
}

/// Says why the test skips (`skipped: {reason}` on stderr), so that it can return and pass.
///
/// # Panics
/// With `reason` when [`required`].
#[track_caller]
pub fn skip(reason: &str) {
    assert!(
        !required(),
        "{reason}; {REQUIRE_SERVICES_VAR}=1 makes a missing service a failure"
    );
    eprintln!("skipped: {reason}");
}

/// The value of `var`, or `None` after [`skip`]ping when it is unset or blank; `setup` says
/// how to set it.
///
/// # Panics
/// When it is missing and [`required`].
#[track_caller]
pub fn setting(var: &str, setup: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            skip(&format!("{var} is not set: {setup}"));
            None
        }
    }
}

/// The URL of a service in `var` (e.g. [`REDIS_URL_VAR`](crate::backend::REDIS_URL_VAR)), or
/// `None` after [`skip`]ping when it is unset.
///
/// # Panics
/// When it is missing and [`required`].
#[track_caller]
pub fn service_url(var: &str) -> Option<String> {
    setting(var, "set it to run this check against the service")
}

/// [`INTEROP_PYTHON_VAR`], or `None` after [`skip`]ping.
///
/// # Panics
/// When it is missing and [`required`].
#[track_caller]
pub fn interop_python() -> Option<String> {
    setting(INTEROP_PYTHON_VAR, INTEROP_SETUP)
}

/// [`INTEROP_NODE_DIR_VAR`], or `None` after [`skip`]ping.
///
/// # Panics
/// When it is missing and [`required`].
#[track_caller]
pub fn interop_node_dir() -> Option<String> {
    setting(INTEROP_NODE_DIR_VAR, INTEROP_SETUP)
}

/// [`BROWSER_DIR_VAR`] and [`CHROMIUM_VAR`], or `None` after [`skip`]ping when either is
/// missing.
///
/// # Panics
/// When one is missing and [`required`].
#[track_caller]
pub fn browser() -> Option<(String, String)> {
    let dir = setting(BROWSER_DIR_VAR, INTEROP_SETUP)?;
    let chromium = setting(
        CHROMIUM_VAR,
        "install chromium (apt-get) and export its path as .ci/run does",
    )?;
    Some((dir, chromium))
}
